"""Run statistics (pure, over records) and retention (``prune``, against the test Redis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from scheduler import stats
from scheduler.stats import Attempt, Run, Step
from scheduler.store import RunStore
from tests.helpers import new_run, spec_from

T0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()


def run_of(i: int, dag: str, steps: list[Step], state: str = "success", took: float = 10.0) -> Run:
    start = T0 + i * 3600
    return Run(f"{dag}-{i}", dag, state, start, start, start + took, tuple(steps))


def step_of(name: str, *attempts: tuple[str, float, str], start: float = T0, tags: dict | None = None) -> Step:
    """attempts: (state, seconds, host) in order; the step's state is the last attempt's."""
    built, at = [], start
    for n, (state, seconds, host) in enumerate(attempts, start=1):
        built.append(Attempt(n, state, host, at, at + seconds))
        at += seconds + 1
    state = {"lost": "failed"}.get(attempts[-1][0], attempts[-1][0]) if attempts else "pending"
    return Step(name, state, tags or {}, tuple(built))


def test_percentile_mad_threshold() -> None:
    assert stats.percentile([], 50) is None
    assert stats.percentile([4.0], 95) == 4.0
    assert stats.percentile([1, 2, 3, 4], 50) == 2.5
    assert stats.percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert stats.mad([1, 1, 2, 2, 4, 6, 9]) == 1
    assert stats.threshold([10, 10, 10, 10]) is None  # fewer than MIN_SAMPLES
    # 2 x p95 dominates for a steady step; the MIN_EXCESS floor for a tiny one.
    assert stats.threshold([10, 11, 9, 10, 12]) == pytest.approx(2 * stats.percentile([10, 11, 9, 10, 12], 95))
    assert stats.threshold([0.01] * 5) == pytest.approx(1.01)


def test_slow_attempts_are_judged_against_their_own_earlier_history() -> None:
    durations = [10, 11, 9, 10, 12, 10, 30, 15, 200]
    runs = [run_of(i, "etl", [step_of("load", ("success", d, "h1"), start=T0 + i * 3600)])
            for i, d in enumerate(durations)]
    found = stats.slow_attempts(runs, now=T0 + 10 * 86400)
    assert [(f["run_id"], f["seconds"]) for f in found] == [("etl-8", 200.0), ("etl-6", 30.0)]
    thirty = found[1]
    assert thirty["samples"] == 6 and thirty["p50_seconds"] == 10.0 and thirty["threshold_seconds"] == 23.5
    # A flagged attempt does not join the history: 200 is judged against 7 samples, not 8.
    assert found[0]["samples"] == 7
    # Fewer than MIN_SAMPLES earlier successes: no verdict at all.
    few = [run_of(i, "etl", [step_of("load", ("success", d, "h1"), start=T0 + i * 3600)])
           for i, d in enumerate([10, 10, 10, 10, 500])]
    assert stats.slow_attempts(few, now=T0 + 10 * 86400) == []
    # A running attempt is judged on its time so far.
    running = Run("etl-9", "etl", "running", T0 + 9 * 3600, T0 + 9 * 3600, None,
                  (Step("load", "running", {}, (Attempt(1, "running", "h2", T0 + 9 * 3600, None),)),))
    found = stats.slow_attempts([*runs, running], now=T0 + 9 * 3600 + 400)
    assert found[0]["run_id"] == "etl-9" and found[0]["state"] == "running"


def test_groups_failure_rates_retries_hosts_and_tags() -> None:
    runs = [
        run_of(0, "etl", [step_of("extract", ("success", 2, "h1"), tags={"vendor": "acme"}),
                          step_of("load", ("failed", 1, "h2"), ("success", 4, "h1"))]),
        run_of(1, "etl", [step_of("extract", ("failed", 1, "h2"), ("lost", 3, "h2"), tags={"vendor": "acme"}),
                          Step("load", "upstream_failed")], state="failed", took=5),
        run_of(2, "etl", [step_of("extract", ("success", 3, "h1"), tags={"vendor": "zen"}),
                          step_of("load", ("success", 6, "h1"))]),
        run_of(3, "ml", [step_of("train", ("cancelled", 1, "h1"))], state="cancelled"),
    ]
    by_dag = {r["key"]: r for r in stats.group(runs, "dag")}
    assert by_dag["etl"] == {"key": "etl", "count": 3, "failed": 1, "failure_rate": 0.3333, "retries": 2,
                             "p50_seconds": 10.0, "p95_seconds": 10.0}
    assert by_dag["ml"]["count"] == 0 and by_dag["ml"]["failure_rate"] is None  # cancelled counts in neither
    by_step = {r["key"]: r for r in stats.group(runs, "step")}
    assert by_step["etl.extract"]["failed"] == 1 and by_step["etl.extract"]["count"] == 3
    assert by_step["etl.load"]["count"] == 2  # upstream_failed counts in neither
    assert by_step["etl.load"]["retries"] == 1 and by_step["etl.load"]["p50_seconds"] == 5.0
    by_host = {r["key"]: r for r in stats.group(runs, "host")}
    assert by_host["h2"] == {"key": "h2", "count": 3, "failed": 3, "failure_rate": 1.0, "retries": 1,
                             "p50_seconds": None, "p95_seconds": None}
    assert by_host["h1"]["failed"] == 0 and by_host["h1"]["retries"] == 1
    by_tag = stats.group(runs, "tag:vendor")
    assert [(r["key"], r["failed"], r["count"]) for r in by_tag] == [("acme", 1, 2), ("zen", 0, 1)]
    report = stats.report(runs, "step", now=T0 + 86400, since=T0)
    assert report["failing_hosts"] == [{"host": "h2", "failures": 3, "attempts": 3, "failure_rate": 1.0}]
    assert report["failing_tags"] == [{"tag": "vendor", "value": "acme", "failures": 1, "steps": 2,
                                       "failure_rate": 0.5}]
    assert report["run_states"] == {"cancelled": 1, "failed": 1, "success": 2} and report["runs"] == 4
    assert stats.check_by("tag:vendor") == "tag:vendor"
    with pytest.raises(ValueError, match="tag:KEY"):
        stats.check_by("colour")


DAG = """
name: pipe
defaults: {image: img}
tags: {team: data}
steps:
  a: {command: [a], retries: 1, tags: {vendor: acme}}
  b: {command: [b], depends_on: [a]}
"""


def finished_run(store: RunStore, *, fail_first: bool, t: datetime, **kwargs) -> str:
    plan, _ = new_run(store, spec_from(DAG), **kwargs)
    rid = plan.run_id
    n = 1
    if fail_first:
        store.start_attempt(rid, "a", 1, host="bad", pid=1, worker="w", now=t)
        store.finish_attempt(rid, "a", 1, "failed", {"exit_code": 1}, now=t + timedelta(seconds=1))
        n = 2
    store.start_attempt(rid, "a", n, host="good", pid=1, worker="w", now=t + timedelta(seconds=2))
    store.append_log(rid, "a", n, b"output\n")
    store.finish_attempt(rid, "a", n, "success", {"exit_code": 0}, now=t + timedelta(seconds=5))
    store.start_attempt(rid, "b", 1, host="good", pid=1, worker="w", now=t + timedelta(seconds=6))
    store.finish_attempt(rid, "b", 1, "success", {"exit_code": 0}, now=t + timedelta(seconds=7))
    return rid


def test_load_reads_runs_steps_attempts_and_tags(store: RunStore) -> None:
    t = datetime(2026, 11, 20, 12, tzinfo=UTC)
    first = finished_run(store, fail_first=True, t=t)
    finished_run(store, fail_first=False, t=t)
    runs = stats.load(store, since=0)
    assert runs[0].run_id == first and len(runs) == 2
    step_a = runs[0].steps[0]
    assert step_a.tags == {"team": "data", "vendor": "acme"}
    assert [(a.number, a.state, a.host, a.duration()) for a in step_a.attempts] == [
        (1, "failed", "bad", 1.0), (2, "success", "good", 3.0)]
    assert stats.load(store, since=0, dag="pipe") == runs
    assert stats.load(store, since=datetime.now(UTC).timestamp() + 60) == []
    report = stats.report(runs, "host", now=t.timestamp(), since=0)
    assert report["failing_hosts"][0]["host"] == "bad"


def keys_of(store: RunStore, run_id: str) -> list[str]:
    return [k for k in store.r.scan_iter(f"{store.prefix}:*") if run_id in k] + [
        k for k in (store.keys.runs(), store.keys.dag_runs("pipe")) if store.r.zscore(k, run_id) is not None]


def test_prune_deletes_whole_ended_runs_and_keeps_active_and_recent_ones(store: RunStore) -> None:
    t = datetime(2026, 11, 20, 12, tzinfo=UTC)
    old = finished_run(store, fail_first=True, t=t, logical_date=t, interval=(t - timedelta(days=1), t))
    key = t.astimezone(UTC).isoformat()
    store.r.hset(store.keys.dag_fires("pipe"), key, old)
    store.r.hset(store.keys.dag_intervals("pipe"), (t - timedelta(days=1)).isoformat(), old)
    store.r.hset(store.keys.dag_fires("pipe"), "2026-01-01T00:00:00+00:00", "someone-else")
    active, _ = new_run(store, spec_from(DAG))
    recent = finished_run(store, fail_first=False, t=t)
    long_ago = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    for rid in (old, active.run_id):
        store.r.zadd(store.keys.runs(), {rid: long_ago})
        store.r.zadd(store.keys.dag_runs("pipe"), {rid: long_ago})
    assert keys_of(store, old) and store.r.exists(store.keys.log(old, "a", 2))
    cutoff = datetime(2026, 2, 1, tzinfo=UTC)
    assert stats.prune(store, cutoff) == 1
    assert keys_of(store, old) == []
    assert store.r.hgetall(store.keys.dag_fires("pipe")) == {"2026-01-01T00:00:00+00:00": "someone-else"}
    assert store.r.hgetall(store.keys.dag_intervals("pipe")) == {}
    assert store.run_record(active.run_id)["state"] != "success"  # still active: never pruned
    assert store.run_record(recent)["state"] == "success"
    assert json.loads(store.run_record(recent)["steps"]) == ["a", "b"]
    assert stats.prune(store, cutoff.timestamp()) == 0


HANDLED = """
name: handled
defaults: {image: img}
steps:
  work: {command: [w]}
on_failure: {command: [f]}
on_exit: {command: [x]}
"""


def test_prune_leaves_no_key_of_a_run_with_handlers(store: RunStore) -> None:
    """Handler steps (``_on_failure``, ``_on_exit``), their attempts and logs go with the run."""
    plan, _ = new_run(store, spec_from(HANDLED))
    rid = plan.run_id
    assert store.start_attempt(rid, "work", 1, host="h", pid=1, worker="w").status == "ok"
    store.append_log(rid, "work", 1, b"work output")
    store.finish_attempt(rid, "work", 1, "failed", {"exit_code": 1})
    for handler in ("_on_failure", "_on_exit"):
        assert store.start_attempt(rid, handler, 1, host="h", pid=1, worker="w").status == "ok"
        store.append_log(rid, handler, 1, b"handler output")
        store.finish_attempt(rid, handler, 1, "success", {"exit_code": 0})
    assert store.run_record(rid)["state"] == "failed"
    assert store.r.exists(store.keys.log(rid, "_on_exit", 1))
    assert store.r.exists(store.keys.attempt(rid, "_on_failure", 1))
    assert stats.prune(store, datetime.now(UTC) + timedelta(days=1)) == 1
    left = [k for k in store.r.scan_iter(f"{store.prefix}:*") if rid in k]
    indexed = [k for k in store.r.scan_iter(f"{store.prefix}:*")
               if store.r.type(k) == "zset" and any(rid in m for m in store.r.zrange(k, 0, -1))]
    assert left == [] and indexed == []
    assert store.r.xlen(store.keys.events()) > 0  # the event history is capped, not pruned per run
