"""The run state machine in Redis, driven directly (no containers): every transition is fenced."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.errors import NotFoundError
from scheduler.graph import find_cycle, topological_order
from scheduler.store import RunStore
from tests.helpers import new_run, spec_from

DIAMOND = """
name: diamond
defaults: {image: img}
steps:
  a: {command: [a]}
  b: {command: [b], depends_on: [a], retries: 2}
  c: {command: [c], depends_on: [a]}
  d: {command: [d], depends_on: [b, c]}
"""


def start(store: RunStore, run_id: str, step: str, attempt: int = 1) -> str:
    return store.start_attempt(run_id, step, attempt, host="h", pid=1, worker="w").status


def finish(store: RunStore, run_id: str, step: str, outcome: str, attempt: int = 1):
    return store.finish_attempt(run_id, step, attempt, outcome, {"exit_code": 0 if outcome == "success" else 1})


def states(store: RunStore, run_id: str) -> dict[str, str]:
    return {s["name"]: s["state"] for s in store.step_records(run_id)}


def test_diamond_readiness_is_event_driven(store: RunStore) -> None:
    plan, ready = new_run(store, spec_from(DIAMOND))
    rid = plan.run_id
    assert [r.step for r in ready] == ["a"]
    assert states(store, rid) == {"a": "queued", "b": "pending", "c": "pending", "d": "pending"}
    assert start(store, rid, "a") == "ok"
    assert store.run_record(rid)["state"] == "running"
    done = finish(store, rid, "a", "success")
    assert sorted(r.step for r in done.ready) == ["b", "c"]
    start(store, rid, "b")
    assert finish(store, rid, "b", "success").ready == ()  # d still waits for c
    start(store, rid, "c")
    assert [r.step for r in finish(store, rid, "c", "success").ready] == ["d"]
    start(store, rid, "d")
    assert finish(store, rid, "d", "success").state == "success"
    record = store.run_record(rid)
    assert record["state"] == "success" and record["ended_at"]


def test_an_attempt_starts_once_and_stale_results_are_ignored(store: RunStore) -> None:
    plan, _ = new_run(store, spec_from(DIAMOND))
    rid = plan.run_id
    assert start(store, rid, "a") == "ok"
    assert start(store, rid, "a") == "stale"
    assert start(store, rid, "a", attempt=2) == "stale"
    assert finish(store, rid, "a", "success", attempt=2).state == "stale"
    assert finish(store, rid, "a", "success").state == "success"
    assert finish(store, rid, "a", "failed").state == "stale"
    assert states(store, rid)["a"] == "success"


def test_retries_then_upstream_failed_and_the_run_fails(store: RunStore) -> None:
    plan, _ = new_run(store, spec_from(DIAMOND))
    rid = plan.run_id
    start(store, rid, "a")
    finish(store, rid, "a", "success")
    for attempt in (1, 2):
        assert start(store, rid, "b", attempt) == "ok"
        result = store.finish_attempt(rid, "b", attempt, "failed", {"exit_code": 3}, retry_delay=1.5)
        assert result.state == "retrying"
        assert result.ready[0].attempt == attempt + 1 and result.ready[0].delay == 1.5
    start(store, rid, "b", 3)
    assert finish(store, rid, "b", "failed", attempt=3).state == "failed"
    assert states(store, rid)["d"] == "upstream_failed"
    assert store.run_record(rid)["state"] == "running"  # c is still queued: the run goes on
    start(store, rid, "c")
    finish(store, rid, "c", "success")
    assert store.run_record(rid)["state"] == "failed"
    attempts = {s["name"]: len(s["attempts"]) for s in store.step_records(rid)}
    assert attempts == {"a": 1, "b": 3, "c": 1, "d": 0}


def test_two_workers_racing_for_one_attempt(store: RunStore) -> None:
    plan, _ = new_run(store, spec_from(DIAMOND))
    results: list[str] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(start(store, plan.run_id, "a"))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ok"] + ["stale"] * 7


def test_cancel_settles_waiting_steps_and_stops_running_ones(store: RunStore) -> None:
    plan, _ = new_run(store, spec_from(DIAMOND))
    rid = plan.run_id
    start(store, rid, "a")
    cancelled = store.cancel_run(rid)
    state, running = cancelled.state, cancelled.running
    assert (state, running) == ("cancelling", 1)
    assert states(store, rid) == {"a": "running", "b": "cancelled", "c": "cancelled", "d": "cancelled"}
    assert store.is_cancelled(rid)
    assert store.finish_attempt(rid, "a", 1, "cancelled", {}).state == "cancelled"
    assert store.run_record(rid)["state"] == "cancelled"
    assert store.cancel_run(rid).state == "cancelled"


def test_max_active_runs_makes_runs_wait_and_hands_over_the_slot(store: RunStore) -> None:
    spec = spec_from("""
        name: limited
        max_active_runs: 1
        steps:
          only: {image: img, command: [x]}
    """)
    first, ready1 = new_run(store, spec)
    second, ready2 = new_run(store, spec)
    assert len(ready1) == 1 and ready2 == []
    assert store.run_record(second.run_id)["state"] == "queued"
    start(store, first.run_id, "only")
    handed = finish(store, first.run_id, "only", "success")
    assert [(r.run_id, r.step) for r in handed.ready] == [(second.run_id, "only")]


def test_submit_is_idempotent_and_versions_change_with_content(store: RunStore) -> None:
    assert store.submit_dag("x", b"a", {}) == (1, True)
    assert store.submit_dag("x", b"a", {}) == (1, False)
    assert store.submit_dag("x", b"b", {}) == (2, True)
    assert store.dag_version("x", 1)["source"] == "a"
    assert store.dag_version("x")["version"] == 2
    with pytest.raises(NotFoundError, match="did you mean 'x'"):
        store.dag_version("xx")


def test_logs_are_capped(store: RunStore) -> None:
    store.log_cap = 100
    assert store.append_log("r", "s", 1, b"x" * 60) == 60
    store.append_log("r", "s", 1, b"y" * 60)
    store.append_log("r", "s", 1, b"z" * 60)
    log = store.read_log("r", "s", 1)
    assert log.startswith(b"x" * 60 + b"y" * 40) and b"truncated at 100 bytes" in log and b"z" not in log


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    count = draw(st.integers(1, 12))
    names = [f"s{i}" for i in range(count)]
    return {n: sorted(draw(st.sets(st.sampled_from(names[:i]))) if i else []) for i, n in enumerate(names)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(graph=dags(), fail=st.integers(0, 11))
def test_random_dags_run_in_topological_order(store: RunStore, graph: dict[str, list[str]], fail: int) -> None:
    """Drive random DAGs to the end: steps start only after their upstreams, every step ends once."""
    lines = ["name: random", "steps:"] + [
        f"  {n}: {{image: img, command: [x], depends_on: [{', '.join(ups)}]}}" for n, ups in graph.items()]
    spec = spec_from("\n".join(lines))
    assert find_cycle(graph) is None
    plan, ready = new_run(store, spec)
    failing = list(graph)[fail % len(graph)]
    done: list[str] = []
    while ready:
        item = ready.pop(0)
        assert all(up in done for up in graph[item.step]), "a step started before its upstreams ended"
        assert start(store, plan.run_id, item.step) == "ok"
        result = finish(store, plan.run_id, item.step, "failed" if item.step == failing else "success")
        done.append(item.step)
        ready += list(result.ready)
    final = states(store, plan.run_id)
    assert store.run_record(plan.run_id)["state"] == "failed"
    assert final[failing] == "failed"
    order = topological_order(graph)
    for name in order:
        ups = graph[name]
        if name != failing:
            expected = "success" if all(final[u] == "success" for u in ups) else "upstream_failed"
            assert final[name] == expected, name


def test_an_idempotency_key_creates_one_run_only(store: RunStore) -> None:
    from datetime import UTC, datetime

    from scheduler.plan import plan_run

    spec = spec_from(DIAMOND)
    store.submit_dag(spec.name, b"x", spec.document)
    first = plan_run(spec, version=1, params={}, now=datetime.now(UTC))
    second = plan_run(spec, version=1, params={}, now=datetime.now(UTC))
    assert store.create_run(first, idempotency_key="2026-11-20T17:00:00-05:00").run_id == first.run_id
    again = store.create_run(second, idempotency_key="2026-11-20T17:00:00-05:00")
    assert (again.run_id, again.created, again.ready) == (first.run_id, False, ())
    assert store.run_ids("diamond") == [first.run_id]


RULES = """
name: rules
defaults: {image: img, command: [x]}
steps:
  ok: {}
  bad: {}
  all_success: {depends_on: [ok, bad]}
  all_done: {depends_on: [ok, bad], trigger_rule: all_done}
  all_failed: {depends_on: [bad], trigger_rule: all_failed}
  one_success: {depends_on: [ok, bad], trigger_rule: one_success}
  one_failed: {depends_on: [ok, bad], trigger_rule: one_failed}
  none_failed: {depends_on: [ok], trigger_rule: none_failed}
  none_failed_bad: {depends_on: [ok, bad], trigger_rule: none_failed}
  after_skip: {depends_on: [all_success]}
  after_skip_none_failed: {depends_on: [all_failed_none], trigger_rule: none_failed}
  all_failed_none: {depends_on: [ok], trigger_rule: all_failed}
  cleanup: {depends_on: [all_success, one_failed], trigger_rule: always}
"""


def test_trigger_rules_and_skip_propagation(store: RunStore) -> None:
    plan, ready = new_run(store, spec_from(RULES))
    rid = plan.run_id
    queued: list[str] = [r.step for r in ready]
    for step, outcome in (("ok", "success"), ("bad", "failed")):
        start(store, rid, step)
        queued += [r.step for r in finish(store, rid, step, outcome).ready]
    s = states(store, rid)
    assert s["all_success"] == "upstream_failed" and s["after_skip"] == "upstream_failed"
    assert s["all_failed_none"] == "skipped"  # its upstream succeeded
    assert s["after_skip_none_failed"] == "queued"  # none_failed runs after a skip
    assert s["none_failed"] == "queued" and s["none_failed_bad"] == "upstream_failed"
    assert {"all_done", "all_failed", "one_success", "one_failed"} <= set(queued)
    assert s["cleanup"] == "pending"  # waits for one_failed to end
    start(store, rid, "one_failed")
    assert [r.step for r in finish(store, rid, "one_failed", "success").ready] == ["cleanup"]


def test_a_cancelled_run_still_runs_its_cleanup_step(store: RunStore) -> None:
    plan, _ = new_run(store, spec_from("""
        name: finally
        defaults: {image: img, command: [x]}
        steps:
          work: {}
          more: {depends_on: [work]}
          cleanup: {depends_on: [work, more], trigger_rule: always}
    """))
    rid = plan.run_id
    start(store, rid, "work")
    store.cancel_run(rid)
    assert states(store, rid) == {"work": "running", "more": "cancelled", "cleanup": "pending"}
    ready = store.finish_attempt(rid, "work", 1, "cancelled", {}).ready
    assert [r.step for r in ready] == ["cleanup"]
    assert start(store, rid, "cleanup") == "ok"
    finish(store, rid, "cleanup", "success")
    assert states(store, rid)["cleanup"] == "success" and store.run_record(rid)["state"] == "cancelled"


def test_skip_step_is_fenced_and_propagates(store: RunStore) -> None:
    plan, _ = new_run(store, spec_from(DIAMOND))
    rid = plan.run_id
    assert store.skip_step(rid, "a", 2).state == "stale"
    assert store.skip_step(rid, "a", 1).state == "skipped"
    assert states(store, rid) == {"a": "skipped", "b": "skipped", "c": "skipped", "d": "skipped"}
    assert store.run_record(rid)["state"] == "success"


def test_ctl_cancel_exits_1_for_any_run_that_had_ended(store: RunStore, settings, monkeypatch, capsys) -> None:
    """Cancelled now: exit 0. Already ended, however (success, failed, cancelled): exit 1, one line."""
    from scheduler.cli.main import main

    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("CONVEYOR_PREFIX", settings.prefix)
    spec = spec_from("name: one\ndefaults: {image: img}\nsteps:\n  a: {command: [a]}\n")
    cancelled, _ = new_run(store, spec)
    assert main(["cancel", cancelled.run_id]) == 0
    succeeded, _ = new_run(store, spec)
    failed, _ = new_run(store, spec)
    for plan, outcome in ((succeeded, "success"), (failed, "failed")):
        assert start(store, plan.run_id, "a") == "ok"
        finish(store, plan.run_id, "a", outcome)
    capsys.readouterr()
    for plan, state in ((cancelled, "cancelled"), (succeeded, "success"), (failed, "failed")):
        assert main(["cancel", plan.run_id]) == 1
        assert capsys.readouterr().err.strip() == f"run {plan.run_id} had already ended: {state}"
