"""SLAs and deadlines: a miss is recorded once, counted, shown by ctl stats, and fires on_sla_miss."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from scheduler.engine import Engine
from scheduler.reaper import Reaper
from scheduler.service import submit_file
from scheduler.stats import load, report
from tests.conftest import Workers, wait_for_run
from tests.helpers import new_run, spec_from, write_dag
from tests.test_cli import ctl

DAG = """
name: slas
defaults: {image: conveyor/busybox:local}
steps:
  slow: {command: [sleep, "3"], sla: 1s}
  fast: {command: ["true"], sla: 1m}
on_sla_miss: {command: [echo, "late: {{ run_id }}"]}
"""


def test_a_missed_sla_is_recorded_once_and_fires_its_handler(tmp_path, settings, store, dispatcher,
                                                              workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, DAG))
    workers.start(2)
    run_id = Engine(store, dispatcher).create_run("slas", {})
    time.sleep(1.5)
    reaper = Reaper(Engine(store, dispatcher))
    assert reaper.sla_misses() == 1
    assert reaper.sla_misses() == 0  # judged once
    assert wait_for_run(store, run_id)["state"] == "success"
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert steps["slow"].get("sla_missed") and not steps["fast"].get("sla_missed")
    assert steps["_on_sla_miss"]["state"] == "success"
    assert store.read_log(run_id, "_on_sla_miss", 1) == f"late: {run_id}\n".encode()
    data = report(load(store, since=0), now=time.time(), since=0)
    assert data["sla_misses"] == [{"run_id": run_id, "dag": "slas", "step": "slow"}]
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    shown = json.loads(ctl("stats", "-o", "json", env=env).stdout)
    assert shown["sla_misses"][0]["step"] == "slow"


def test_a_run_deadline_in_the_dags_timezone(store) -> None:
    spec = spec_from("""
        name: deadline
        deadline: "18:00"
        schedule: {cron: "0 9 * * *", timezone: America/New_York}
        steps: {s: {image: x, command: [x]}}
    """)
    logical = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)  # 09:00 in New York
    plan, _ = new_run(store, spec, logical_date=logical)
    assert plan.slas == (("", datetime(2026, 11, 20, 23, 0, tzinfo=UTC).timestamp()),)  # 18:00 EST
    early, _ = new_run(store, spec, logical_date=logical + timedelta(hours=10))  # after 18:00: the next day
    assert early.slas[0][1] == datetime(2026, 11, 21, 23, 0, tzinfo=UTC).timestamp()


def test_sla_misses_are_counted_in_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from scheduler.metrics import StreamMetrics

    registry = CollectorRegistry()
    metrics = StreamMetrics(registry, lambda run_id: "slas")
    metrics.handle({"kind": "step", "run": "r1", "step": "slow", "state": "sla_miss", "attempt": "", "at": ""})
    metrics.handle({"kind": "step", "run": "r2", "step": "", "state": "sla_miss", "attempt": "", "at": ""})
    assert registry.get_sample_value("conveyor_sla_misses_total", {"dag": "slas", "step": "slow"}) == 1
    assert registry.get_sample_value("conveyor_sla_misses_total", {"dag": "slas", "step": ""}) == 1
