"""Pools: slots are never exceeded, waiting steps hold no worker, freed slots go on at once."""

from __future__ import annotations

import json
from datetime import datetime

from scheduler.engine import Engine
from scheduler.service import submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import new_run, spec_from, write_dag
from tests.test_cli import ctl


def test_pool_slots_in_the_store(store) -> None:
    store.set_pool("db", 1)
    plan, _ = new_run(store, spec_from("""
        name: pooled
        priority: low
        defaults: {image: img, command: [x], pool: db}
        steps: {a: {}, b: {}, c: {priority: high}}
    """))
    rid = plan.run_id
    assert store.start_attempt(rid, "a", 1, host="h", pid=1, worker="w").status == "ok"
    assert store.start_attempt(rid, "b", 1, host="h", pid=1, worker="w").status == "pooled"
    assert store.start_attempt(rid, "c", 1, host="h", pid=1, worker="w").status == "pooled"
    assert store.pools() == [{"name": "db", "slots": 1, "used": 1, "waiting": 2}]
    handed = store.finish_attempt(rid, "a", 1, "success", {}).ready
    assert [r.step for r in handed] == ["c"]  # the high-priority one first
    assert store.start_attempt(rid, "c", 1, host="h", pid=1, worker="w").status == "ok"  # holds its slot already
    assert [r.step for r in store.set_pool("db", 2)] == ["b"]
    assert store.pools()[0]["used"] == 2
    store.cancel_run(rid)
    assert store.pools()[0]["used"] == 1  # b's slot came back when it was cancelled; c still runs
    store.finish_attempt(rid, "c", 1, "cancelled", {})
    assert store.pools()[0]["used"] == 0


def test_slots_never_exceeded_under_four_workers(tmp_path, settings, store, dispatcher, workers: Workers) -> None:
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    assert ctl("pool", "set", "db", "2", env=env).returncode == 0
    submit_file(store, write_dag(tmp_path, "name: fan\nsteps:\n" + "".join(
        f"  s{i}: {{image: conveyor/busybox:local, command: [sleep, '1'], pool: db}}\n" for i in range(8))))
    workers.start(4)
    run_id = Engine(store, dispatcher).create_run("fan", {})
    assert wait_for_run(store, run_id, timeout=90)["state"] == "success"
    first = [s["attempts"][0] for s in store.step_records(run_id)]
    spans = [(datetime.fromisoformat(a["started_at"]), datetime.fromisoformat(a["ended_at"])) for a in first]
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans], key=lambda e: (e[0], e[1]))
    running = peak = 0
    for _, delta in edges:
        running += delta
        peak = max(peak, running)
    assert peak == 2, f"{peak} steps of the pool ran at once"
    assert json.loads(ctl("pool", "list", "-o", "json", env=env).stdout) == [
        {"name": "db", "slots": 2, "used": 0, "waiting": 0}]


def test_a_cap_per_queue(store) -> None:
    store.set_pool("queue:low", 1)
    plan, _ = new_run(store, spec_from("""
        name: capped
        priority: low
        defaults: {image: img, command: [x]}
        steps: {a: {}, b: {}, urgent: {priority: high}}
    """))
    rid = plan.run_id
    assert store.start_attempt(rid, "a", 1, host="h", pid=1, worker="w").status == "ok"
    assert store.start_attempt(rid, "b", 1, host="h", pid=1, worker="w").status == "pooled"
    assert store.start_attempt(rid, "urgent", 1, host="h", pid=1, worker="w").status == "ok"  # other queue
    assert [r.step for r in store.finish_attempt(rid, "a", 1, "success", {}).ready] == ["b"]
