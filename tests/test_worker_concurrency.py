"""``ctl worker --concurrency N``: one process runs N attempts at once, each slot an RQ worker of its
own, with the promises of a single worker (fenced attempts, shutdown grace, steps handed back)."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path

from rq import Worker

from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.service import submit_file
from scheduler.settings import Settings
from scheduler.store import RunStore
from tests.conftest import Workers, wait_for_run
from tests.helpers import IMAGE, write_dag


def fan(name: str, width: int, seconds: float, retries: int = 1) -> str:
    steps = "".join(f"  s{i}: {{image: {IMAGE}, command: [sleep, '{seconds}'], retries: {retries}}}\n"
                    for i in range(width))
    return f"name: {name}\nsteps:\n{steps}"


def running(store: RunStore, run_id: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(s["state"] == "running" for s in store.step_records(run_id)) < count:
        assert time.monotonic() < deadline, [s["state"] for s in store.step_records(run_id)]
        time.sleep(0.1)


def slots(settings: Settings) -> list[Worker]:
    return Worker.all(connection=settings.connect(decode=False))


def test_one_process_runs_its_slots_at_once(tmp_path: Path, settings: Settings, store: RunStore,
                                           dispatcher: Dispatcher, workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, fan("t-perf-fan", 3, 3)))
    [process] = workers.start(1, "--concurrency", "3", "--name", "t-perf-w")
    deadline = time.monotonic() + 30
    while len(slots(settings)) < 3:  # every slot is an RQ worker of its own
        assert time.monotonic() < deadline and process.poll() is None, workers.output()
        time.sleep(0.1)
    assert sorted(w.name for w in slots(settings)) == ["t-perf-w-1", "t-perf-w-2", "t-perf-w-3"]
    run_id = Engine(store, dispatcher).create_run("t-perf-fan", {})
    assert wait_for_run(store, run_id)["state"] == "success"
    attempts = [s["attempts"][0] for s in store.step_records(run_id)]
    assert {a["pid"] for a in attempts} == {str(process.pid)}
    starts = [datetime.fromisoformat(a["started_at"]) for a in attempts]
    ends = [datetime.fromisoformat(a["ended_at"]) for a in attempts]
    assert max(starts) < min(ends), "the three 3 s steps overlapped in one process"


def test_sigterm_stops_idle_slots_and_lets_running_steps_finish(tmp_path: Path, settings: Settings,
                                                               store: RunStore, dispatcher: Dispatcher,
                                                               workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, fan("t-perf-two", 2, 2)))
    [process] = workers.start(1, "--concurrency", "4")
    run_id = Engine(store, dispatcher).create_run("t-perf-two", {})
    running(store, run_id, 2)
    process.send_signal(signal.SIGTERM)  # two slots idle, two running
    assert process.wait(timeout=30) == 0
    steps = store.step_records(run_id)
    assert [s["state"] for s in steps] == ["success", "success"] and all(len(s["attempts"]) == 1 for s in steps)
    assert slots(settings) == []  # every slot deregistered


def test_past_the_grace_running_steps_are_handed_back(tmp_path: Path, settings: Settings, store: RunStore,
                                                      dispatcher: Dispatcher) -> None:
    submit_file(store, write_dag(tmp_path, fan("t-perf-long", 2, 30, retries=0)))
    pool = Workers(settings, tmp_path)
    os.environ["CONVEYOR_SHUTDOWN_GRACE"] = "1"
    try:
        [process] = pool.start(1, "--concurrency", "2")
        run_id = Engine(store, dispatcher).create_run("t-perf-long", {})
        running(store, run_id, 2)
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert time.monotonic() - began < 15  # 1 s of grace, then both containers stopped at once
        for step in store.step_records(run_id):
            assert step["state"] == "retrying" and step["attempts"][0]["state"] == "requeue"
            assert step["attempts"][0]["reason"] == "worker_shutdown"
    finally:
        os.environ.pop("CONVEYOR_SHUTDOWN_GRACE")
        pool.stop()
    store.cancel_run(run_id)


def test_a_killed_process_loses_every_slots_attempt(tmp_path: Path, settings: Settings, store: RunStore,
                                                    dispatcher: Dispatcher, workers: Workers) -> None:
    """Leases are per attempt: SIGKILL the process, and each of its running attempts is taken over by
    another worker (adopted while its container exists, else declared lost and run again)."""
    submit_file(store, write_dag(tmp_path, fan("t-perf-kill", 2, 3)))
    os.environ["CONVEYOR_ATTEMPT_LEASE"] = "2"
    try:
        [first] = workers.start(1, "--concurrency", "2")
        run_id = Engine(store, dispatcher).create_run("t-perf-kill", {})
        running(store, run_id, 2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        workers.start(1, "--concurrency", "2")
        assert wait_for_run(store, run_id, timeout=90)["state"] == "success"
    finally:
        os.environ.pop("CONVEYOR_ATTEMPT_LEASE")
    for step in store.step_records(run_id):
        # Its container still there, another worker adopts the same attempt (runner/adoption.py); gone
        # already, the attempt is lost and run again. Either way each slot's attempt was taken over.
        states = [a["state"] for a in step["attempts"]]
        assert states == ["lost", "success"] or (states == ["success"] and step["attempts"][0]["adopted_by"]), \
            step["attempts"]
