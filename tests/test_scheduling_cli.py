"""The time commands as users run them: ctl next, backfill, calendars and global outages."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

from rq import Queue

from runner.worker import FAIR_TURN, ConveyorWorker
from tests.conftest import Workers
from tests.helpers import write_dag
from tests.test_cli import ctl

MONTH_END = """
name: month-end
schedule:
  cron: "0 17 * * *"
  timezone: America/New_York
  calendar: NYSE
  business_day: -1
  catchup: false
  outages: [maintenance]
batch: 1d
outages:
  maintenance: {cron: "0 2 * * sun", duration: 2h, timezone: Europe/London}
steps:
  report: {image: conveyor/busybox:local, command: [echo, "{{ ds }}"]}
"""

DAILY = """
name: daily
params: {table: {type: string, default: orders}}
schedule: {cron: "0 3 * * *", timezone: Europe/London}
batch: 1d
steps:
  load: {image: conveyor/busybox:local, command: [echo, "{{ params.table }} {{ ds }} {{ data_interval_end }}"]}
"""


def test_next_for_the_issue_example_file(tmp_path) -> None:
    path = write_dag(tmp_path, MONTH_END)
    result = ctl("next", str(path), "-n", "3", "--from", "2026-11-01T00:00:00+00:00", "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["timezone"] == "America/New_York"
    assert [f["at"] for f in data["fires"]] == [
        "2026-11-30T17:00:00-05:00", "2026-12-31T17:00:00-05:00", "2027-01-29T17:00:00-05:00"]
    assert data["fires"][0]["utc"] == "2026-11-30T22:00:00+00:00"
    reasons = {d["at"][:10]: d["reason"] for d in data["dropped"]}
    assert reasons["2026-11-26"] == "holiday: Thanksgiving Day (NYSE)"
    assert reasons["2026-11-28"] == "weekend (Saturday)"
    assert reasons["2026-11-27"] == "not the last business day of the month"
    assert reasons["2027-01-01"] == "holiday: New Year's Day (NYSE)"
    assert data["dropped_by_reason"] == {"not the last business day of the month": 58, "weekend": 25, "holiday": 4}
    table = ctl("next", str(path), "-n", "1", "--from", "2026-11-25T00:00:00+00:00")
    assert "2026-11-30T17:00:00-05:00" in table.stdout and "Thanksgiving Day" not in table.stdout
    assert table.stdout.splitlines()[-1] == ("5 dropped: 2 not the last business day of the month, 2 weekend, "
                                             "1 holiday (--explain lists them)")
    explained = ctl("next", str(path), "-n", "1", "--from", "2026-11-25T00:00:00+00:00", "--explain")
    assert "dropped: holiday: Thanksgiving Day (NYSE)" in explained.stdout
    summary = "5 dropped: 2 not the last business day of the month, 2 weekend, 1 holiday"
    assert explained.stdout.splitlines()[-1] == summary


def test_next_names_the_outage_that_skips_a_fire(tmp_path) -> None:
    text = MONTH_END.replace("business_day: -1", "outage_policy: skip").replace(
        "cron: \"0 2 * * sun\", duration: 2h, timezone: Europe/London",
        "start: '2026-12-24T12:00', end: '2026-12-24T18:00', timezone: America/New_York")
    data = json.loads(ctl("next", str(write_dag(tmp_path, text)), "-n", "2", "--from", "2026-12-23T23:00:00+00:00",
                          "-o", "json").stdout)
    assert {"at": "2026-12-24T17:00:00-05:00", "utc": "2026-12-24T22:00:00+00:00",
            "reason": "outage: maintenance"} in data["dropped"]


def test_next_of_a_submitted_dag_with_a_named_calendar(tmp_path, settings) -> None:
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    calendars = tmp_path / "calendars.yaml"
    calendars.write_text("calendars:\n  ops: {holidays: [GB], extra_holidays: ['2026-12-02']}\n")
    assert ctl("calendar", "submit", str(calendars), env=env).returncode == 0
    dag = write_dag(tmp_path, DAILY.replace("timezone: Europe/London}", "timezone: Europe/London, calendar: ops}"))
    offline = ctl("validate", str(dag), env={"REDIS_URL": ""})  # without Redis, a named calendar is unknown
    assert offline.returncode == 0 and "named calendar 'ops': cannot check offline (set REDIS_URL)" in offline.stderr
    assert ctl("validate", str(dag), env=env).stderr == ""  # checked against Redis: known
    assert ctl("validate", "--strict", str(dag), env={"REDIS_URL": ""}).returncode == 1
    assert ctl("submit", str(dag), env=env).returncode == 0
    data = json.loads(ctl("next", "daily", "-n", "3", "--from", "2026-12-01T12:00:00+00:00", "-o", "json",
                          env=env).stdout)
    assert [f["at"][:10] for f in data["fires"]] == ["2026-12-03", "2026-12-04", "2026-12-07"]
    assert {"at": "2026-12-02T03:00:00+00:00", "utc": "2026-12-02T03:00:00+00:00",
            "reason": "extra holiday"} in data["dropped"]


def test_backfill_batches_resumes_and_reprocesses(tmp_path, settings, store, workers: Workers) -> None:
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    assert ctl("submit", str(write_dag(tmp_path, DAILY)), env=env).returncode == 0
    window = ["--start", "2026-11-01", "--end", "2026-11-08"]
    plan = json.loads(ctl("backfill", "daily", *window, "--dry-run", "-o", "json", env=env).stdout)
    assert [p["action"] for p in plan] == ["create"] * 7
    assert plan[0] == {"start": "2026-11-01T00:00:00+00:00", "end": "2026-11-02T00:00:00+00:00", "action": "create"}
    workers.start(2)
    done = ctl("backfill", "daily", *window, "--max-active-runs", "3", "-o", "json", env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["created"] == 7 and {r["state"] for r in result["runs"]} == {"success"}
    first = store.run_record(result["runs"][0]["run_id"])
    assert (first["trigger"], first["priority"]) == ("backfill", "low")
    assert first["data_interval_start"] == "2026-11-01T00:00:00+00:00"
    assert store.read_log(first["run_id"], "load", 1) == b"orders 2026-11-01 2026-11-02T00:00:00+00:00\n"
    again = json.loads(ctl("backfill", "daily", *window, "-o", "json", env=env).stdout)
    assert again["created"] == 0 and again["skipped"] == 7
    replan = json.loads(ctl("backfill", "daily", *window, "--reprocess", "all", "--dry-run", "--backwards",
                            "-o", "json", env=env).stdout)
    assert [p["action"] for p in replan] == ["create"] * 7 and replan[0]["start"].startswith("2026-11-07")
    monthly = json.loads(ctl("backfill", "daily", "--start", "2026-01-01", "--end", "2026-04-01", "--batch", "1mo",
                             "--dry-run", "-o", "json", env=env).stdout)
    assert [p["end"][:10] for p in monthly] == ["2026-02-01", "2026-03-01", "2026-04-01"]


def test_no_step_starts_inside_a_global_outage(tmp_path, settings, store, workers: Workers) -> None:
    env = {"REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    assert ctl("submit", str(write_dag(tmp_path, DAILY)), env=env).returncode == 0
    now = datetime.now(UTC).replace(microsecond=0)
    end = now + timedelta(seconds=10)
    added = ctl("outage", "add", "freeze", "--start", now.strftime("%Y-%m-%dT%H:%M:%S"),
                "--end", end.strftime("%Y-%m-%dT%H:%M:%S"), env=env)
    assert added.returncode == 0, added.stderr
    assert json.loads(ctl("outage", "list", "-o", "json", env=env).stdout)["freeze"]["timezone"] == "UTC"
    workers.start(1)
    run_id = json.loads(ctl("trigger", "daily", "-o", "json", env=env).stdout)["run_id"]
    time.sleep(1.5)
    assert datetime.now(UTC) < end - timedelta(seconds=1), "the machine was too slow to test inside the window"
    assert store.step_records(run_id)[0]["state"] == "queued"
    deadline = time.monotonic() + 30
    while store.run_record(run_id)["state"] != "success":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    started = datetime.fromisoformat(store.step_records(run_id)[0]["attempts"][0]["started_at"])
    assert started >= end
    assert ctl("outage", "remove", "freeze", env=env).returncode == 0
    assert ctl("outage", "remove", "freeze", env=env).returncode == 1


def test_priority_has_a_fairness_turn(settings) -> None:
    connection = settings.connect(decode=False)
    queues = [Queue(q, connection=connection) for q in ("high", "default", "low")]
    worker = ConveyorWorker(queues, connection=connection)
    orders = []
    for _ in range(2 * FAIR_TURN):
        worker.reorder_queues(queues[0])
        orders.append(worker._ordered_queues[0].name)
    assert orders.count("low") == 2 and orders.count("high") == 2 * FAIR_TURN - 2
