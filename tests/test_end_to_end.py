"""Whole runs through Redis, RQ and real ``ctl worker`` processes, each step a real container."""

from __future__ import annotations

import itertools
import json
from datetime import datetime

from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.service import submit_file
from scheduler.store import RunStore
from tests.conftest import TEST_PREFIX, Workers, wait_for_run
from tests.helpers import write_dag


def status(store: RunStore, run_id: str) -> dict[str, dict]:
    return {s["name"]: s for s in store.step_records(run_id)}


def test_diamond_in_containers(tmp_path, store: RunStore, dispatcher: Dispatcher, workers: Workers) -> None:
    path = write_dag(tmp_path, """
        name: diamond
        params: {date: {type: date, required: true}}
        defaults: {image: conveyor/busybox:local}
        steps:
          a: {command: [echo, "a {{ params.date }}"]}
          b: {command: [sh, -c, "sleep 0.5; echo b"], depends_on: [a]}
          c: {command: [echo, c], depends_on: [a]}
          d: {command: [echo, "d of {{ dag }}"], depends_on: [b, c]}
    """)
    submit_file(store, path)
    workers.start(2)
    run_id = Engine(store, dispatcher).create_run("diamond", {"date": "2026-11-20"})
    assert wait_for_run(store, run_id)["state"] == "success", {
        n: [(a.get("state"), a.get("reason"), a.get("error")) for a in s["attempts"]]
        for n, s in status(store, run_id).items()}
    steps = status(store, run_id)
    assert {n: s["state"] for n, s in steps.items()} == dict.fromkeys("abcd", "success")
    start = {n: datetime.fromisoformat(s["attempts"][0]["started_at"]) for n, s in steps.items()}
    end = {n: datetime.fromisoformat(s["attempts"][0]["ended_at"]) for n, s in steps.items()}
    assert start["b"] >= end["a"] and start["c"] >= end["a"]
    assert start["d"] >= max(end["b"], end["c"])
    assert store.read_log(run_id, "a", 1) == b"a 2026-11-20\n"
    assert store.read_log(run_id, "d", 1) == b"d of diamond\n"
    attempt = steps["d"]["attempts"][0]
    assert attempt["image_id"].startswith("sha256:") and attempt["container_id"] and attempt["host"]
    assert attempt["engine_version"] and attempt["exit_code"] == "0"
    assert {s["attempts"][0]["worker"] for s in steps.values()} <= {p for p in _worker_names(store)}


def _worker_names(store: RunStore) -> set[str]:
    return {a["worker"] for s in store.r.scan_iter(match=f"{store.prefix}:run:*:a:*") for a in [store.r.hgetall(s)]}


def test_retries_with_backoff_record_every_attempt(tmp_path, store, dispatcher, workers) -> None:
    path = write_dag(tmp_path, """
        name: flaky
        steps:
          always_fails:
            image: conveyor/busybox:local
            command: [sh, -c, "echo try; exit 7"]
            retries: 2
            retry_backoff: {initial: 1s, factor: 1, jitter: 0}
          after: {image: conveyor/busybox:local, command: ["true"], depends_on: [always_fails]}
    """)
    submit_file(store, path)
    workers.start(1)
    run_id = Engine(store, dispatcher).create_run("flaky", {})
    assert wait_for_run(store, run_id, timeout=60)["state"] == "failed"
    steps = status(store, run_id)
    attempts = steps["always_fails"]["attempts"]
    assert [a["number"] for a in attempts] == ["1", "2", "3"]
    assert all(a["exit_code"] == "7" and a["reason"] == "exit_code" for a in attempts)
    for before, after in itertools.pairwise(attempts):
        gap = (datetime.fromisoformat(after["started_at"]) - datetime.fromisoformat(before["ended_at"]))
        assert gap.total_seconds() >= 0.9, "the retry did not wait for its backoff"
    assert steps["after"]["state"] == "upstream_failed" and steps["after"]["attempts"] == []
    assert store.read_log(run_id, "always_fails", 2) == b"try\n"


def test_timeout_and_params_reach_argv_verbatim(tmp_path, store, dispatcher, workers) -> None:
    path = write_dag(tmp_path, """
        name: params
        params: {text: {type: string}}
        steps:
          echo: {image: conveyor/busybox:local, command: [echo, "{{ params.text }}"]}
          slow: {image: conveyor/busybox:local, command: [sleep, "30"], timeout: 1s}
    """)
    submit_file(store, path)
    workers.start(2)
    hostile = "$(touch /pwned); `id` {{ run_id }} !!python/object 'x' \"y\""
    run_id = Engine(store, dispatcher).create_run("params", {"text": hostile})
    assert wait_for_run(store, run_id)["state"] == "failed"
    assert store.read_log(run_id, "echo", 1) == hostile.encode() + b"\n"
    slow = status(store, run_id)["slow"]
    assert slow["state"] == "failed" and slow["attempts"][0]["reason"] == "timeout"


def test_duplicate_deliveries_never_run_an_attempt_twice(tmp_path, store, dispatcher, workers) -> None:
    """Every ready attempt is delivered three times (as after a crash and a reconcile); each runs once."""
    path = write_dag(tmp_path, "name: fan\nsteps:\n" + "".join(
        f"  s{i}: {{image: conveyor/busybox:local, command: [echo, '{i}']}}\n" for i in range(8)))
    submit_file(store, path)
    from rq import Queue

    from scheduler.plan import plan_run
    from scheduler.service import load_version
    from scheduler.spec import resolve_params

    spec, record = load_version(store, "fan")
    plan = plan_run(spec, version=record["version"], params=resolve_params(spec, {}), now=datetime.now().astimezone())
    ready = store.create_run(plan).ready
    queue = Queue("high", connection=dispatcher.queues["high"].connection)
    for copy in range(3):
        for item in ready:
            queue.enqueue_call("runner.job.run_attempt", args=(item.run_id, item.step, item.attempt, TEST_PREFIX),
                               job_id=f"{item.run_id}-{item.step}-{item.attempt}-copy{copy}", result_ttl=0)
    workers.start(3)
    assert wait_for_run(store, plan.run_id)["state"] == "success"
    events = store.r.xrange(store.keys.events())
    starts = [e for _, e in events if e["run"] == plan.run_id and e["state"] == "running" and e["step"]]
    assert sorted(e["step"] for e in starts) == sorted(f"s{i}" for i in range(8))
    assert all(len(s["attempts"]) == 1 for s in status(store, plan.run_id).values())


def test_cancel_stops_running_containers(tmp_path, store, dispatcher, workers, docker_client) -> None:
    path = write_dag(tmp_path, """
        name: long
        steps:
          sleepy: {image: conveyor/busybox:local, command: [sleep, "60"]}
          next: {image: conveyor/busybox:local, command: ["true"], depends_on: [sleepy]}
    """)
    submit_file(store, path)
    workers.start(1)
    run_id = Engine(store, dispatcher).create_run("long", {})
    import time

    deadline = time.monotonic() + 30
    while status(store, run_id)["sleepy"]["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    cancelled = store.cancel_run(run_id)
    state, running = cancelled.state, cancelled.running
    assert (state, running) == ("cancelling", 1)
    assert wait_for_run(store, run_id, timeout=15)["state"] == "cancelled"
    steps = status(store, run_id)
    assert steps["sleepy"]["state"] == "cancelled" and steps["next"]["state"] == "cancelled"
    assert steps["sleepy"]["attempts"][0]["reason"] == "cancelled"
    deadline = time.monotonic() + 10  # removed right after the result is recorded (a worker dying between adopts it)
    while docker_client.api.containers(all=True, filters={"label": f"dev.conveyor.run={run_id}"}):
        assert time.monotonic() < deadline, "the cancelled step's container was not removed"
        time.sleep(0.05)


def test_status_json_shape(tmp_path, store, dispatcher, workers) -> None:
    from scheduler.cli.views import status_object

    path = write_dag(tmp_path, "name: shape\nsteps:\n  only: {image: conveyor/busybox:local, command: ['true']}\n")
    submitted = submit_file(store, path)
    workers.start(1)
    run_id = Engine(store, dispatcher).create_run("shape", {})
    wait_for_run(store, run_id)
    data = json.loads(json.dumps(status_object(store, run_id)))
    assert set(data) >= {"run_id", "dag", "dag_version", "dag_sha256", "git_commit", "state", "params", "created_at",
                         "started_at", "ended_at", "steps"}
    assert data["dag_sha256"] == submitted.sha256 and len(data["dag_sha256"]) == 64
    attempt = data["steps"][0]["attempts"][0]
    assert set(attempt) >= {"number", "state", "exit_code", "image", "image_id", "image_digest", "container_id",
                            "host", "started_at", "ended_at", "error"}
    assert attempt["number"] == 1 and attempt["exit_code"] == 0 and attempt["state"] == "success"
    for stamp in (data["created_at"], data["started_at"], data["ended_at"], attempt["started_at"]):
        assert datetime.fromisoformat(stamp).utcoffset() is not None
