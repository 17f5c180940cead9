"""The Prometheus exporter against the test Redis: run events driven through the store (no containers),
scraped over HTTP and parsed with prometheus_client's own parser."""

from __future__ import annotations

import time
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scheduler import metrics
from scheduler.settings import Settings
from scheduler.store import RunStore
from tests.helpers import new_run, spec_from

DAG = """
name: pipe
defaults: {image: img}
steps:
  a: {command: [a], retries: 1}
  b: {command: [b], depends_on: [a]}
"""
T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def wait_for(port: int, name: str, labels: dict, value: float, timeout: float = 5) -> dict:
    deadline = time.monotonic() + timeout
    key = (name, tuple(sorted(labels.items())))
    while True:
        samples = scrape(port)
        if samples.get(key) == value or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


@pytest.fixture
def exporter(store: RunStore, settings: Settings):
    started = metrics.start(store, settings.connect(decode=False), 0, "127.0.0.1")
    started.tail.block_ms = 100
    yield started
    started.stop()


def run_pipe(store: RunStore, *, fail_b: bool) -> str:
    plan, _ = new_run(store, spec_from(DAG))
    rid = plan.run_id
    assert store.start_attempt(rid, "a", 1, host="h", pid=1, worker="w", now=at(2)).status == "ok"  # waited 2 s
    store.finish_attempt(rid, "a", 1, "failed", {"exit_code": 1}, now=at(5))  # 3 s, retried
    store.start_attempt(rid, "a", 2, host="h", pid=1, worker="w", now=at(6))
    store.finish_attempt(rid, "a", 2, "success", {"exit_code": 0}, now=at(13))  # 7 s
    store.start_attempt(rid, "b", 1, host="h", pid=1, worker="w", now=at(14))
    store.finish_attempt(rid, "b", 1, "failed" if fail_b else "success", {}, now=at(14.5))
    return rid


def test_stream_counters_and_histograms(store: RunStore, exporter: metrics.Exporter) -> None:
    first = run_pipe(store, fail_b=False)
    assert store.run_record(first)["state"] == "success"
    samples = wait_for(exporter.port, "conveyor_runs_total", {"dag": "pipe", "state": "success"}, 1.0)
    assert samples[("conveyor_runs_total", (("dag", "pipe"), ("state", "success")))] == 1.0
    second = run_pipe(store, fail_b=True)
    assert store.run_record(second)["state"] == "failed"
    samples = wait_for(exporter.port, "conveyor_runs_total", {"dag": "pipe", "state": "failed"}, 1.0)

    def value(name: str, **labels: str) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert value("conveyor_runs_total", dag="pipe", state="failed") == 1.0
    assert value("conveyor_runs_total", dag="pipe", state="success") == 1.0
    assert value("conveyor_steps_total", dag="pipe", step="a", state="success") == 2.0
    assert value("conveyor_steps_total", dag="pipe", step="b", state="success") == 1.0
    assert value("conveyor_steps_total", dag="pipe", step="b", state="failed") == 1.0
    assert value("conveyor_step_retries_total", dag="pipe", step="a") == 2.0
    # a: 3 s (failed try) and 7 s per run; b: 0.5 s per run.
    assert value("conveyor_step_duration_seconds_count", dag="pipe", step="a") == 4.0
    assert value("conveyor_step_duration_seconds_sum", dag="pipe", step="a") == pytest.approx(20.0)
    assert value("conveyor_step_duration_seconds_bucket", dag="pipe", step="a", le="5.0") == 2.0
    assert value("conveyor_step_duration_seconds_sum", dag="pipe", step="b") == pytest.approx(1.0)
    # Only first attempts are waits (a retry's wait includes its backoff): a and b, twice.
    assert value("conveyor_step_wait_seconds_count", dag="pipe") == 4.0
    assert value("conveyor_metrics_events_total") and value("conveyor_redis_up") == 1.0


def test_handle_is_exact_with_event_times() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    m = metrics.StreamMetrics(registry, lambda rid: {"r1": "etl"}.get(rid, "unknown"))
    events = [
        {"run": "r1", "kind": "step", "step": "x", "state": "queued", "attempt": "1", "at": at(0).isoformat()},
        {"run": "r1", "kind": "step", "step": "x", "state": "running", "attempt": "1", "at": at(1.5).isoformat()},
        {"run": "r1", "kind": "step", "step": "x", "state": "success", "attempt": "1", "at": at(4).isoformat()},
        {"run": "r1", "kind": "run", "step": "", "state": "success", "attempt": "", "at": at(4).isoformat()},
        {"run": "r1", "kind": "step", "step": "y", "state": "upstream_failed", "attempt": "0", "at": "bad"},
    ]
    for event in events:
        m.handle(event)
    get = registry.get_sample_value
    assert get("conveyor_step_wait_seconds_sum", {"dag": "etl"}) == 1.5
    assert get("conveyor_step_duration_seconds_sum", {"dag": "etl", "step": "x"}) == 2.5
    assert get("conveyor_runs_total", {"dag": "etl", "state": "success"}) == 1.0
    assert get("conveyor_steps_total", {"dag": "etl", "step": "y", "state": "upstream_failed"}) == 1.0
    assert get("conveyor_step_duration_seconds_count", {"dag": "etl", "step": "y"}) is None


def test_gauges_read_on_scrape(store: RunStore, settings: Settings) -> None:
    from prometheus_client import generate_latest

    rq = settings.connect(decode=False)
    for _ in range(3):
        rq.rpush("rq:queue:low", b"job")
    rq.rpush("rq:queue:high", b"job")
    new_run(store, spec_from(DAG))  # a queued
    plan, _ = new_run(store, spec_from(DAG))
    store.start_attempt(plan.run_id, "a", 1, host="h", pid=1, worker="w")
    store.r.zadd(store.keys.agenda(), {"late": 1000.0, "later": 5000.0})
    registry, _ = metrics.build(store, rq, clock=lambda: 1042.5)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples}
    assert samples[("conveyor_queue_depth", (("queue", "low"),))] == 3
    assert samples[("conveyor_queue_depth", (("queue", "high"),))] == 1
    assert samples[("conveyor_queue_depth", (("queue", "default"),))] == 0
    assert samples[("conveyor_running_steps", ())] == 1
    assert samples[("conveyor_queued_steps", ())] == 1
    assert samples[("conveyor_scheduler_lag_seconds", ())] == pytest.approx(42.5)
    assert samples[("conveyor_worker_busy_ratio", ())] == 0
    registry, _ = metrics.build(store, rq, clock=lambda: 10.0)
    assert registry.get_sample_value("conveyor_scheduler_lag_seconds") == 0


def test_workers_and_busy_ratio(store: RunStore, settings: Settings) -> None:
    from rq import Queue, Worker
    from rq.worker import WorkerStatus

    rq = settings.connect(decode=False)
    workers = [Worker([Queue("default", connection=rq)], connection=rq, name=f"w{i}") for i in range(4)]
    for worker in workers:
        worker.register_birth()
    workers[0].set_state(WorkerStatus.BUSY)
    workers[1].set_state(WorkerStatus.IDLE)
    try:
        registry, _ = metrics.build(store, rq)
        assert registry.get_sample_value("conveyor_worker_busy_ratio") == 0.25
        assert registry.get_sample_value("conveyor_workers", {"state": "busy"}) == 1
    finally:
        for worker in workers:
            worker.register_death()


def test_redis_down_is_reported_not_raised() -> None:
    import redis

    dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    store = RunStore.__new__(RunStore)
    store.r = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2, decode_responses=True)
    from scheduler.keys import Keys

    store.keys = Keys("x")
    collector = metrics.RedisCollector(store, dead)
    families = list(collector.collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("conveyor_redis_up", 0)]


def test_only_events_after_start_are_counted(store: RunStore, settings: Settings) -> None:
    run_pipe(store, fail_b=False)
    started = metrics.start(store, settings.connect(decode=False), 0, "127.0.0.1")
    try:
        started.tail.block_ms = 100
        samples = scrape(started.port)
        assert not [key for key in samples if key[0] == "conveyor_runs_total"]
    finally:
        started.stop()


def test_the_dashboard_uses_only_exported_metric_names(store: RunStore, settings: Settings) -> None:
    import json
    import re

    from prometheus_client import generate_latest

    from tests.conftest import ROOT

    registry, _ = metrics.build(store, settings.connect(decode=False))
    exported = set(re.findall(r"^# TYPE (conveyor_\w+) ", generate_latest(registry).decode(), re.M))
    dashboard = json.loads((ROOT / "compose/grafana/conveyor-dashboard.json").read_text())
    used = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
            for name in re.findall(r"(conveyor_\w+?)(?:_bucket)?\b", target["expr"])}
    assert used and used <= exported, used - exported


def test_lost_attempts_are_counted(store: RunStore, exporter: metrics.Exporter) -> None:
    from scheduler.store import member

    plan, _ = new_run(store, spec_from(DAG))
    assert store.start_attempt(plan.run_id, "a", 1, host="h", pid=1, worker="w", lease=0.05).status == "ok"
    time.sleep(0.2)  # the lease expires by Redis's clock
    assert store.lose(member(plan.run_id, "a", 1)).state == "retrying"
    samples = wait_for(exporter.port, "conveyor_attempts_lost_total", {"dag": "pipe", "step": "a"}, 1.0)
    assert samples[("conveyor_attempts_lost_total", (("dag", "pipe"), ("step", "a")))] == 1.0


def test_leader_gauge_follows_the_scheduler(exporter: metrics.Exporter) -> None:
    leading = [False]
    metrics.watch_leadership(exporter.registry, lambda: leading[0])
    assert scrape(exporter.port)[("conveyor_scheduler_leader", ())] == 0.0
    leading[0] = True
    assert scrape(exporter.port)[("conveyor_scheduler_leader", ())] == 1.0
