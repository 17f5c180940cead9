"""Redis failover through Sentinel: real redis-server processes (one primary, one replica, three Sentinels
on loopback; ``redis-server --sentinel`` is what Debian's ``redis-sentinel`` runs), real workers and
containers, the primary SIGKILLed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.errors import ConveyorError
from scheduler.model import AttemptOutcome
from scheduler.redis_url import parse, redact
from scheduler.replicas import WAIT_TIMEOUT_MS
from scheduler.results import StartStatus
from scheduler.service import submit_file
from scheduler.settings import Settings, signing_key_from_env
from scheduler.store import RunStore, member
from tests.conftest import TEST_PREFIX, Workers, free_port, wait_for_run
from tests.helpers import new_run, spec_from, write_dag

SERVICE = "conveyor"
DOWN_AFTER_MS = 1000  # the documented Sentinel timeouts: see README, "Redis failover"
FAILOVER_TIMEOUT_MS = 5000


def test_sentinel_urls_parse_and_never_print_passwords() -> None:
    url = parse("redis+sentinel://:s3cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/2?sentinel_password=x")
    assert url.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (url.service, url.db, url.password, url.sentinel_password) == ("mymaster", 2, "s3cret", "x")
    assert parse("redis+sentinel://h:1/svc").db == 0
    assert "s3cret" not in repr(url)
    shown = redact("redis+sentinel://:s3cret@h:26379/svc/0?sentinel_password=x")
    assert "s3cret" not in shown and "=x" not in shown and shown.startswith("redis+sentinel://:***@h:26379/svc/0")
    assert "s3cret" not in repr(Settings("redis+sentinel://:s3cret@h:26379/svc/0"))
    for bad in ("redis+sentinel://h:26379", "redis+sentinel:///svc", "redis+sentinel://h:x/svc",
                "redis+sentinel://h/svc/zero"):
        with pytest.raises(ConveyorError):
            parse(bad)


def _wait_ping(port: int) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(250):
        try:
            client.ping()
            return
        except redis.ConnectionError:
            time.sleep(0.02)
    raise AssertionError(f"redis on {port} did not start")


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen, list[int], subprocess.Popen]]:
    """Primary, replica and three Sentinels; yields the URL, the primary's process, the data ports and the
    replica's process."""
    binary = shutil.which("redis-server")
    assert binary
    processes: list[subprocess.Popen] = []
    primary, replica = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    # The documented deployment requirement: a write is refused unless a replica is connected and recent.
    for port, extra in ((primary, ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"]),
                        (replica, ["--replicaof", "127.0.0.1", str(primary)])):
        folder = tmp_path / f"data-{port}"
        folder.mkdir()
        processes.append(subprocess.Popen([binary, "--port", str(port), "--dir", str(folder), *common, *extra],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_ping(port)
    sentinels = [free_port() for _ in range(3)]
    for port in sentinels:
        conf = tmp_path / f"sentinel-{port}.conf"
        conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                        f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                        f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
                        f"sentinel parallel-syncs {SERVICE} 1\n")
        processes.append(subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        _wait_ping(port)
    deadline = time.monotonic() + 20  # the replica in sync, every Sentinel aware of it
    while redis.Redis(port=primary).info("replication").get("min_slaves_good_slaves", 0) < 1 or any(
            int(redis.Redis(port=p).sentinel_master(SERVICE).get("num-slaves", 0)) < 1 for p in sentinels):
        assert time.monotonic() < deadline, "the Sentinel group did not form"
        time.sleep(0.1)
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in sentinels) + f"/{SERVICE}/0"
    yield url, processes[0], [primary, replica], processes[1]
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(timeout=10)


def test_a_primary_killed_mid_run_loses_and_repeats_nothing(tmp_path: Path, image: str,
                                                             sentinel_group) -> None:
    url, primary, (_primary_port, replica_port), _replica = sentinel_group
    settings = Settings(url, prefix=f"{TEST_PREFIX}-sentinel", signing_key=signing_key_from_env())
    store = RunStore.connect(settings)
    dispatcher = Dispatcher(settings.connect(decode=False), settings.prefix)
    steps = "\n".join(f"  s{i}: {{image: conveyor/busybox:local, command: [sh, -c, 'sleep 0.3; echo s{i}'], "
                      f"retries: 3, retry_backoff: {{initial: 1s, jitter: 0}}}}" for i in range(50))
    submit_file(store, write_dag(tmp_path, f"name: sentinel-test\nsteps:\n{steps}\n"))
    pool = Workers(settings, tmp_path)
    os.environ["CONVEYOR_ATTEMPT_LEASE"] = "5"
    try:
        pool.start(3)
        run_id = Engine(store, dispatcher).create_run("sentinel-test", {})
        deadline = time.monotonic() + 120
        while sum(s["state"] == "success" for s in store.step_records(run_id)) < 10:
            assert time.monotonic() < deadline and store.run_record(run_id)["state"] in ("queued", "running"), \
                pool.output()
            time.sleep(0.1)
        before = {s["name"]: (s["state"], len(s["attempts"])) for s in store.step_records(run_id)}
        primary.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        primary.wait()
        while True:  # the first transition on the new primary: any step moved on
            try:
                now = {s["name"]: (s["state"], len(s["attempts"])) for s in store.step_records(run_id)}
                if now != before:
                    break
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            assert time.monotonic() - killed < 60, "no transition after the failover"
            time.sleep(0.05)
        first_transition = time.monotonic() - killed
        record = wait_for_run(store, run_id, timeout=180)
        output = pool.output()
    finally:
        os.environ.pop("CONVEYOR_ATTEMPT_LEASE", None)
        pool.stop()
    print(f"\nkill of the primary to the first new transition: {first_transition:.1f} s "
          f"(Sentinel down-after {DOWN_AFTER_MS} ms)")
    assert redis.Redis(port=replica_port).info("replication")["role"] == "master"  # the failover happened
    assert record["state"] == "success", output
    final = store.step_records(run_id)
    assert len(final) == 50
    for step in final:
        assert step["state"] == "success"
        assert sum(a["state"] == "success" for a in step["attempts"]) == 1, step
        assert store.read_log(run_id, step["name"], len(step["attempts"])) == f"{step['name']}\n".encode()
    assert first_transition < 10, f"{first_transition:.1f} s from the kill to the first transition"
    assert "Traceback" not in output


def test_start_finish_and_adopt_are_on_a_replica_before_the_worker_acts(sentinel_group) -> None:
    """The transitions whose loss in a failover would run a step twice return only once the replica has
    them (``WAIT 1``); with the replica stalled they wait for the timeout and say so."""
    url, _primary, (_primary_port, replica_port), replica = sentinel_group
    store = RunStore.connect(Settings(url, prefix=f"{TEST_PREFIX}-wait", signing_key=signing_key_from_env()))
    plan, _ = new_run(store, spec_from("""
        name: wait-test
        steps:
          a: {image: conveyor/busybox:local, command: ["true"]}
          b: {image: conveyor/busybox:local, command: ["true"]}
    """))
    rid, on_replica = plan.run_id, redis.Redis(port=replica_port, decode_responses=True)
    assert store.replicated.replicas() == 1
    assert store.start_attempt(rid, "a", 1, host="h", pid=1, worker="w", lease=30).status is StartStatus.OK
    assert on_replica.hget(store.keys.attempt(rid, "a", 1), "state") == "running"  # there when start returned
    assert store.adopt(member(rid, "a", 1), adopter="x", lease=30).status is not StartStatus.OK  # lease held
    store.finish_attempt(rid, "a", 1, AttemptOutcome.SUCCESS, {"exit_code": 0})
    assert on_replica.hget(store.keys.attempt(rid, "a", 1), "state") == "success"
    assert store.replicated.unconfirmed == 0
    replica.send_signal(signal.SIGSTOP)  # a replica that does not acknowledge
    try:
        began = time.monotonic()
        assert store.start_attempt(rid, "b", 1, host="h", pid=1, worker="w", lease=30).status is StartStatus.OK
        waited = time.monotonic() - began
    finally:
        replica.send_signal(signal.SIGCONT)
    assert waited >= WAIT_TIMEOUT_MS / 1000 * 0.9  # it waited for the replica, then went on (and says so)
    assert store.replicated.unconfirmed == 1
