"""Nothing lost when a worker, the scheduler or Redis dies: real processes, real kills."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import docker
import pytest
import redis

from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.reaper import Reaper
from scheduler.service import load_version, submit_file
from scheduler.settings import Settings, signing_key_from_env
from scheduler.store import RunStore
from tests.conftest import Workers, free_port, wait_for_run
from tests.helpers import new_run, spec_from, write_dag

SLOW = """
name: slow
steps:
  nap: {image: conveyor/busybox:local, command: [sh, -c, "echo start; sleep SECONDS; echo done"], retries: 1,
        retry_backoff: {initial: 1s, jitter: 0}}
  after: {image: conveyor/busybox:local, command: [echo, after], depends_on: [nap]}
"""


def wait_running(store: RunStore, run_id: str, step: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = {s["name"]: s for s in store.step_records(run_id)}[step]
        if record["state"] == "running":
            return record
        time.sleep(0.05)
    raise AssertionError(f"{step} never ran")


def test_a_lost_attempt_is_fenced_and_retried(store: RunStore) -> None:
    spec = spec_from(SLOW.replace("SECONDS", "1"))
    plan, _ready = new_run(store, spec)
    rid = plan.run_id
    assert store.start_attempt(rid, "nap", 1, host="h", pid=1, worker="w", lease=0.2).status == "ok"
    assert store.renew(rid, "nap", 1, lease=0.2)
    assert store.lose(f"{rid}|nap|1").state == "alive"  # the lease is still held
    time.sleep(0.3)
    assert store.expired() == [f"{rid}|nap|1"]
    lost = store.lose(f"{rid}|nap|1", retry_delay=1)
    assert lost.state == "retrying" and lost.ready[0].attempt == 2
    assert not store.renew(rid, "nap", 1)  # the old worker learns it lost the attempt
    assert store.finish_attempt(rid, "nap", 1, "success", {}).state == "stale"  # its late result is ignored
    attempt = store.step_records(rid)[0]["attempts"][0]
    assert attempt["state"] == "lost" and attempt["reason"] == "lost"


def test_kill_9_a_worker_mid_step_its_container_is_adopted(tmp_path: Path, settings: Settings, store: RunStore,
                                                           dispatcher: Dispatcher, docker_client: docker.DockerClient,
                                                           image: str) -> None:
    submit_file(store, write_dag(tmp_path, SLOW.replace("SECONDS", "4")))
    pool = Workers(settings, tmp_path)
    env_lease = {"CONVEYOR_ATTEMPT_LEASE": "2"}
    os.environ.update(env_lease)
    try:
        [victim] = pool.start(1)
        run_id = Engine(store, dispatcher).create_run("slow", {})
        wait_running(store, run_id, "nap")
        deadline = time.monotonic() + 30  # its container started (a busy machine may take a while to start one)
        while not docker_client.containers.list(filters={"label": f"dev.conveyor.run={run_id}"}):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
        victim.wait()
        assert docker_client.containers.list(filters={"label": f"dev.conveyor.run={run_id}"}), \
            "the dead worker's container should still be running"
        pool.start(1)
        record = wait_for_run(store, run_id, timeout=60)
    finally:
        for key in env_lease:
            os.environ.pop(key)
        pool.stop()
    assert record["state"] == "success"
    nap = {s["name"]: s for s in store.step_records(run_id)}["nap"]
    # The dead worker's container was adopted, not run again: one attempt, followed to its end by another worker.
    [only] = nap["attempts"]
    assert only["state"] == "success" and only["adopted_by"] and only["adopted_by"] != only["worker"]
    assert store.read_log(run_id, "nap", 1) == b"start\ndone\n"
    adopted = datetime.fromisoformat(only["adopted_at"]).timestamp() - killed_at
    assert adopted < 2 + 2 * 2.5 + 3, f"adopted after {adopted:.1f}s"  # lease + two sweeps + worker start
    deadline = time.monotonic() + 10  # removed right after its result is recorded
    while docker_client.api.containers(all=True, filters={"label": f"dev.conveyor.run={run_id}"}):
        assert time.monotonic() < deadline, "the adopted container was not removed"
        time.sleep(0.05)


def test_sigterm_lets_the_step_finish(tmp_path: Path, settings: Settings, store: RunStore,
                                      dispatcher: Dispatcher, workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, SLOW.replace("SECONDS", "2")))
    [worker] = workers.start(1)
    run_id = Engine(store, dispatcher).create_run("slow", {})
    wait_running(store, run_id, "nap")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    nap = {s["name"]: s for s in store.step_records(run_id)}["nap"]
    assert nap["state"] == "success" and len(nap["attempts"]) == 1
    assert {s["name"]: s for s in store.step_records(run_id)}["after"]["state"] == "queued"  # left for others


def test_sigterm_past_the_grace_hands_the_step_back(tmp_path: Path, settings: Settings, store: RunStore,
                                                    dispatcher: Dispatcher, image: str) -> None:
    submit_file(store, write_dag(tmp_path, SLOW.replace("SECONDS", "30").replace("retries: 1", "retries: 0")))
    pool = Workers(settings, tmp_path)
    os.environ["CONVEYOR_SHUTDOWN_GRACE"] = "1"
    try:
        [first] = pool.start(1)
        run_id = Engine(store, dispatcher).create_run("slow", {})
        wait_running(store, run_id, "nap")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        nap = {s["name"]: s for s in store.step_records(run_id)}["nap"]
        assert nap["state"] == "retrying" and nap["attempts"][0]["state"] == "requeue"
        assert nap["attempts"][0]["reason"] == "worker_shutdown"
    finally:
        os.environ.pop("CONVEYOR_SHUTDOWN_GRACE")
        pool.stop()
    store.cancel_run(run_id)


def test_a_vanished_job_is_enqueued_again(tmp_path: Path, store: RunStore, dispatcher: Dispatcher,
                                          workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, SLOW.replace("SECONDS", "0")))
    spec, record = load_version(store, "slow")
    from datetime import UTC

    from scheduler.plan import plan_run

    plan = plan_run(spec, version=record["version"], params={}, now=datetime.now(UTC))
    store.create_run(plan)  # state says queued, but the process "crashed" before the enqueue
    workers.start(1)
    time.sleep(1.5)
    assert store.run_record(plan.run_id)["state"] == "queued"
    assert Reaper(Engine(store, dispatcher), queued_grace=1).vanished_jobs() == 1
    assert Reaper(Engine(store, dispatcher), queued_grace=1).vanished_jobs() == 0  # enqueued once, not twice
    assert wait_for_run(store, plan.run_id)["state"] == "success"


def test_a_standby_scheduler_leads_soon_after_the_lease_expires(tmp_path: Path, settings: Settings,
                                                                 store: RunStore) -> None:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    args = [sys.executable, "-m", "scheduler.cli.main", "scheduler", "--lease-ttl", "2", "--log-level", "WARNING"]
    procs = [subprocess.Popen(args, env=env) for _ in range(2)]
    try:
        deadline = time.monotonic() + 20
        while not store.r.get(store.keys.leader()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        holder, token = store.r.get(store.keys.leader()).rsplit("|", 1)
        leader = next(p for p in procs if f"-{p.pid}-" in holder)
        leader.send_signal(signal.SIGKILL)
        expiry = time.monotonic() + store.r.pttl(store.keys.leader()) / 1000
        while (store.r.get(store.keys.leader()) or "|").rsplit("|", 1)[0] in {holder, ""}:
            assert time.monotonic() < expiry + 5
            time.sleep(0.01)
        took_over = time.monotonic() - expiry
        _new_holder, new_token = store.r.get(store.keys.leader()).rsplit("|", 1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout=20)
    assert took_over < 1.0, f"the standby took {took_over:.2f}s after the lease expired"
    assert int(new_token) > int(token)


@pytest.fixture
def aof_redis(tmp_path: Path):
    """A redis-server with the AOF settings compose/ and the chart use, restartable on one port."""
    port = free_port()
    folder = tmp_path / "aof"
    folder.mkdir()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec"]

    def start() -> subprocess.Popen:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        for _ in range(200):
            try:
                client.ping()
                return process
            except redis.ConnectionError:
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    state = {"process": start()}

    def restart() -> None:
        state["process"].send_signal(signal.SIGTERM)
        state["process"].wait(timeout=20)
        time.sleep(1)
        state["process"] = start()

    yield f"redis://127.0.0.1:{port}/0", restart
    state["process"].terminate()
    state["process"].wait(timeout=20)


def test_a_redis_restart_mid_run_loses_nothing(tmp_path: Path, aof_redis, image: str) -> None:
    url, restart = aof_redis
    settings = Settings(url, prefix="aof", signing_key=signing_key_from_env())
    store = RunStore.connect(settings)
    dispatcher = Dispatcher(settings.connect(decode=False), settings.prefix)
    submit_file(store, write_dag(tmp_path, SLOW.replace("SECONDS", "3")))
    pool = Workers(settings, tmp_path)
    try:
        pool.start(1)
        run_id = Engine(store, dispatcher).create_run("slow", {})
        wait_running(store, run_id, "nap")
        restart()
        record = wait_for_run(store, run_id, timeout=90)
        output = pool.output()
    finally:
        pool.stop()
        for container in docker.from_env().containers.list(all=True, filters={"label": "dev.conveyor.prefix=aof"}):
            container.remove(force=True)
    assert record["state"] == "success", output
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert steps["nap"]["state"] == "success" and steps["after"]["state"] == "success"
    assert store.read_log(run_id, "nap", len(steps["nap"]["attempts"])).endswith(b"done\n")
    assert "Traceback" not in output
    assert json.loads(store.run_record(run_id)["params"]) == {}


def test_a_delayed_retry_survives_the_worker_that_scheduled_it(tmp_path: Path, settings: Settings, store: RunStore,
                                                               dispatcher: Dispatcher, image: str) -> None:
    """Retries wait in Redis, not in one worker's RQ scheduler: killing that worker loses none."""
    submit_file(store, write_dag(tmp_path, """
        name: flaky
        steps:
          once: {image: conveyor/busybox:local, command: [sh, -c, "exit 1"], retries: 1,
                 retry_backoff: {initial: 3s, jitter: 0}}
    """))
    pool = Workers(settings, tmp_path)
    try:
        [first] = pool.start(1)
        run_id = Engine(store, dispatcher).create_run("flaky", {})
        deadline = time.monotonic() + 30
        while store.step_records(run_id)[0]["state"] != "retrying":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait()
        pool.start(1)
        record = wait_for_run(store, run_id, timeout=30)
    finally:
        pool.stop()
    attempts = store.step_records(run_id)[0]["attempts"]
    assert record["state"] == "failed" and len(attempts) == 2
    gap = (datetime.fromisoformat(attempts[1]["started_at"]) - datetime.fromisoformat(attempts[0]["ended_at"]))
    assert 2.9 <= gap.total_seconds() < 8, gap
