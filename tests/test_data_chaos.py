"""Issue #14's chaos cases with real processes: ``ctl worker`` and ``ctl scheduler`` killed with SIGKILL
during a mapped instance, during a sensor's poke, and between a producer's success and its consumer's
dataset trigger. Nothing is lost and nothing runs twice: each container appends a line to a file in a
bind-mounted folder, so the test counts the containers that really ran, not only what the store says.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore
from tests.conftest import wait_for_run
from tests.helpers import write_dag
from tests.test_adoption import NamedWorkers, attempts, wait_for

LEASE = 3.0


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """The folder every container of these tests appends its line to (mounted at /shared)."""
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)
    return folder


@pytest.fixture
def pool(settings: Settings, tmp_path: Path, image: str, shared: Path) -> Iterator[NamedWorkers]:
    """Named workers with a short attempt lease, allowed to mount the shared folder."""
    saved = os.environ.get("CONVEYOR_ATTEMPT_LEASE")
    os.environ["CONVEYOR_ATTEMPT_LEASE"] = str(LEASE)
    workers = NamedWorkers(settings, tmp_path)
    yield workers
    workers.stop()
    if saved is None:
        os.environ.pop("CONVEYOR_ATTEMPT_LEASE", None)
    else:
        os.environ["CONVEYOR_ATTEMPT_LEASE"] = saved


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def kill_the_worker_of(pool: NamedWorkers, store: RunStore, run_id: str, step: str, ready) -> str:
    """Once ``ready(attempt)`` holds for the step's running attempt and its container runs, SIGKILL the
    worker that holds it; returns that worker's name."""
    def running() -> bool:
        last = (attempts(store, run_id, step) or [{}])[-1]
        return last.get("state") == "running" and ready(last)

    wait_for(running, what=f"{step} running")
    wait_for(lambda: any(c["Labels"].get("dev.conveyor.step") == step for c in pool.containers(run_id)),
             what=f"the container of {step}")
    time.sleep(0.5)
    name = attempts(store, run_id, step)[-1]["worker"]
    kill(pool.by_name[name])
    return name


def test_a_worker_killed_during_a_mapped_instance(tmp_path: Path, store: RunStore, dispatcher: Dispatcher,
                                                  pool: NamedWorkers, shared: Path) -> None:
    """The instance's container is adopted: every instance runs once, the aggregate is complete and in
    index order, and the step downstream runs once."""
    mount = f"{{source: {shared}, target: /shared, read_only: false}}"
    submit_file(store, write_dag(tmp_path, f"""
        name: data3-chaos-fan
        defaults: {{image: conveyor/busybox:local, retries: 2, retry_backoff: {{initial: 1s, jitter: 0}},
                   mounts: [{mount}]}}
        steps:
          fan:
            for_each: [a, b, c, d]
            outputs: [v]
            command: [sh, -c, 'echo {{{{ index }}}} >> /shared/fan; sleep 2.5;
                      echo "{{{{ item }}}}-{{{{ index }}}}" > $CONVEYOR_OUTPUTS/v']
          agg:
            depends_on: [fan]
            command: [sh, -c, 'echo "$V" >> /shared/agg']
            env: {{V: "{{{{ steps.fan.outputs.v }}}}"}}
    """))
    pool.named("first", "second", args=("--allow-mount", str(shared)))
    run_id = Engine(store, dispatcher).create_run("data3-chaos-fan", {})
    victim = kill_the_worker_of(pool, store, run_id, "fan[1]", lambda _: True)
    pool.named("third", args=("--allow-mount", str(shared)))
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success", pool.output()
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert sorted(lines(shared / "fan")) == ["0", "1", "2", "3"], "each instance's container ran exactly once"
    for i in range(4):
        [only] = steps[f"fan[{i}]"]["attempts"]
        assert only["state"] == "success" and json.loads(only["outputs"]) == {"v": f"{'abcd'[i]}-{i}"}
    killed = steps["fan[1]"]["attempts"][0]
    assert killed["worker"] == victim and killed["adopted_by"] not in ("", None, victim)
    assert steps["fan"]["state"] == "success"
    assert lines(shared / "agg") == ['["a-0","b-1","c-2","d-3"]'], "downstream ran once, with every output"
    assert len(steps["agg"]["attempts"]) == 1
    assert not store.running_attempts()


def test_a_worker_killed_mid_poke(tmp_path: Path, store: RunStore, dispatcher: Dispatcher, pool: NamedWorkers,
                                  shared: Path) -> None:
    """The poke's container is adopted: its "not yet" counts once, the sensor succeeds on its third poke,
    the attempt's log has every poke's output once, and nothing is left running or waiting."""
    submit_file(store, write_dag(tmp_path, f"""
        name: data3-chaos-sensor
        defaults: {{image: conveyor/busybox:local}}
        steps:
          wait:
            mounts: [{{source: {shared}, target: /shared, read_only: false}}]
            command: [sh, -c, 'echo poke >> /shared/pokes; n=$(wc -l < /shared/pokes); echo "poke $n begins";
                      sleep 2; echo "poke $n ends"; [ $n -ge 3 ] || exit 100']
            sensor: {{interval: 1s, timeout: 1m}}
            retries: 1
          after: {{command: [echo, done], depends_on: [wait]}}
    """))
    pool.named("first", "second", args=("--allow-mount", str(shared)))
    run_id = Engine(store, dispatcher).create_run("data3-chaos-sensor", {})
    victim = kill_the_worker_of(pool, store, run_id, "wait", lambda attempt: attempt.get("pokes") == "1")
    assert wait_for_run(store, run_id, timeout=60)["state"] == "success", pool.output()
    assert lines(shared / "pokes") == ["poke"] * 3, "each poke's container ran once"
    [only] = attempts(store, run_id, "wait")
    assert only["state"] == "success" and only["pokes"] == "2"
    assert only["adopted_by"] not in ("", None, victim)
    expected = "".join(f"poke {n} begins\npoke {n} ends\n" for n in (1, 2, 3))
    assert store.read_log(run_id, "wait", 1).decode() == expected, "no byte of a poke's output lost or doubled"
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert len(steps["after"]["attempts"]) == 1
    assert not store.running_attempts()
    assert all(a["state"] in {"success", "failed", "lost"} for s in steps.values() for a in s["attempts"])


class Schedulers:
    """``ctl scheduler`` processes (a short leader lease), found again by the leader key."""

    def __init__(self, settings: Settings, store: RunStore, tmp_path: Path):
        self.store = store
        self.env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
        self.log = open(tmp_path / "schedulers.log", "wb")  # noqa: SIM115
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        self.processes.append(subprocess.Popen(
            [sys.executable, "-m", "scheduler.cli.main", "scheduler", "--lease-ttl", "2", "--log-level", "INFO"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT))

    def leader(self) -> subprocess.Popen:
        def holder() -> subprocess.Popen | None:
            held = (self.store.r.get(self.store.keys.leader()) or "").split("|")[0]
            return next((p for p in self.processes if p.poll() is None and f"-{p.pid}-" in held), None)

        wait_for(lambda: holder() is not None, what="a leading scheduler")
        leader = holder()
        assert leader is not None
        return leader

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                kill(process)
        self.log.close()


@pytest.fixture
def schedulers(settings: Settings, store: RunStore, tmp_path: Path) -> Iterator[Schedulers]:
    running = Schedulers(settings, store, tmp_path)
    yield running
    running.stop()


def test_kills_between_a_producer_s_success_and_its_consumer_s_trigger(
        tmp_path: Path, store: RunStore, dispatcher: Dispatcher, pool: NamedWorkers, shared: Path,
        schedulers: Schedulers) -> None:
    """Two schedulers. The producer's worker is killed while its container runs (the adopter records the
    success, and with it the event) while the leading scheduler is frozen, and that scheduler is then
    killed without having seen it; then external events, each followed by a SIGKILL of the leader at a
    random moment around its trigger. The consumer gets exactly one run per new event, each its own."""
    mount = f"{{source: {shared}, target: /shared, read_only: false}}"
    submit_file(store, write_dag(tmp_path, f"""
        name: data3-chaos-producer
        defaults: {{image: conveyor/busybox:local, mounts: [{mount}]}}
        steps:
          write: {{command: [sh, -c, 'echo wrote >> /shared/produced; sleep 2'], produces: [data3.chaos]}}
    """, "producer.yaml"))
    submit_file(store, write_dag(tmp_path, f"""
        name: data3-chaos-consumer
        defaults: {{image: conveyor/busybox:local, mounts: [{mount}]}}
        schedule: {{on: [data3.chaos]}}
        steps:
          read: {{command: [sh, -c, 'echo "$D" >> /shared/consumed'], env: {{D: "{{{{ datasets }}}}"}}}}
    """, "consumer.yaml"))
    pool.named("first", "second", args=("--allow-mount", str(shared)))
    schedulers.start()
    schedulers.start()
    engine = Engine(store, dispatcher)
    consumer_runs = lambda: store.run_ids("data3-chaos-consumer")  # noqa: E731

    producer = engine.create_run("data3-chaos-producer", {})
    frozen = schedulers.leader()
    victim = kill_the_worker_of(pool, store, producer, "write", lambda _: True)
    frozen.send_signal(signal.SIGSTOP)  # the leader cannot see the event the adopter is about to record
    assert wait_for_run(store, producer, timeout=30)["state"] == "success", pool.output()
    [write] = attempts(store, producer, "write")
    assert write["worker"] == victim and write["adopted_by"] not in ("", None, victim)
    assert store.dataset_last_events(["data3.chaos"])["data3.chaos"]["seq"] == 1
    kill(frozen)
    schedulers.start()
    wait_for(lambda: len(consumer_runs()) == 1, timeout=20, what="the consumer's run after the leader's death")

    rng = random.Random(14)
    for seq in (2, 3, 4):
        leader = schedulers.leader()
        engine.emit_dataset("data3.chaos", {"n": seq}, source="test")
        time.sleep(rng.uniform(0, 0.05))  # before, during or after the leader's trigger
        kill(leader)
        schedulers.start()
        wait_for(lambda n=seq: len(consumer_runs()) >= n, timeout=20, what=f"the consumer's run for event {seq}")
    time.sleep(3)  # a pass or two more of the new leader: nothing more is triggered
    runs = consumer_runs()
    assert len(runs) == 4, "exactly one run per new event"
    for run_id in runs:
        assert wait_for_run(store, run_id, timeout=30)["state"] == "success"
    consumed = [json.loads(line) for line in lines(shared / "consumed")]
    assert sorted(e["seq"] for [e] in consumed) == [1, 2, 3, 4], "each event set consumed by one run"
    assert [e["run"] for [e] in consumed if e["seq"] == 1] == [producer]
    assert lines(shared / "produced") == ["wrote"], "the producer's container ran once"
    assert store.datasets_seen("data3-chaos-consumer") == {"data3.chaos": 4}
