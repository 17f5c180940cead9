"""Staged runs: written ahead of their due time, released onto the queues at it, and taken back when
the DAG is paused or changed, or calendars and outages change, before that time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

from rq import Queue
from rq.job import Job

from scheduler.agenda import Agenda
from scheduler.cli.views import run_object
from scheduler.daemon import Scheduler
from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.plan import plan_run
from scheduler.service import load_version, submit_file
from scheduler.staging import Staging
from tests.conftest import wait_for_run
from tests.helpers import write_dag

DAG = """
name: five
schedule: {cron: "*/5 * * * *"}
steps:
  first: {image: conveyor/busybox:local, command: [echo, "{{ logical_date }}"]}
  second: {image: conveyor/busybox:local, command: [echo, two], depends_on: [first]}
"""
T0 = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)
DUE = datetime(2026, 11, 20, 12, 5, tzinfo=UTC)


def at(seconds_before_due: float) -> datetime:
    return DUE - timedelta(seconds=seconds_before_due)


def setup(tmp_path, store, dispatcher, text: str = DAG) -> Scheduler:
    submit_file(store, write_dag(tmp_path, text), now=T0)
    daemon = Scheduler(Engine(store, dispatcher), lookahead=15)
    daemon.tick(T0)
    return daemon


def queued_ids(dispatcher) -> list[str]:
    """Job ids on the default queue that a worker would run (a taken-back run's id may stay on the queue
    without its job: RQ skips an id whose job is gone)."""
    connection = dispatcher.connection
    ids = [j.decode() for j in connection.lrange(Queue("default", connection=connection).key, 0, -1)]
    return [i for i in ids if Job.exists(i, connection=connection)]


def test_a_run_is_staged_ahead_and_reaches_the_queue_at_its_due_time(tmp_path, store, dispatcher) -> None:
    daemon = setup(tmp_path, store, dispatcher)
    assert daemon.tick(at(20)) == at(15).timestamp()  # nothing yet: wakes when the lookahead starts
    assert store.run_ids("five") == []
    assert daemon.tick(at(10)) == DUE.timestamp()  # staged: wakes at the due time to release it
    [run_id] = store.run_ids("five")
    record = store.run_record(run_id)
    assert record["state"] == "queued" and record["created_at"].startswith("2026-11-20T12:05:00")
    assert json.loads(record["provenance"])["staged"] is True
    job = Job.fetch(f"{run_id}-first-1", connection=dispatcher.connection)
    assert job.get_status() == "scheduled"
    assert queued_ids(dispatcher) == []  # not before its time, however often the daemon looks
    daemon.tick(at(0.001))
    assert queued_ids(dispatcher) == []
    daemon.tick(DUE)
    assert queued_ids(dispatcher) == [f"{run_id}-first-1"]  # only the root step
    assert store.r.zcard(store.keys.staged()) == 0
    daemon.tick(DUE + timedelta(seconds=1))  # the same fire is never created a second time
    assert store.run_ids("five") == [run_id]
    assert queued_ids(dispatcher) == [f"{run_id}-first-1"]


def test_a_fresh_leader_releases_what_a_dead_one_staged(tmp_path, store, dispatcher) -> None:
    setup(tmp_path, store, dispatcher).tick(at(10))
    [run_id] = store.run_ids("five")
    successor = Scheduler(Engine(store, dispatcher), lookahead=15)  # no memory of the first one
    successor.tick(at(5))  # looks at the DAG again: the fire is staged already, nothing new
    assert store.run_ids("five") == [run_id]
    successor.tick(DUE)
    assert queued_ids(dispatcher) == [f"{run_id}-first-1"]


def test_pausing_takes_a_staged_run_back(tmp_path, store, dispatcher) -> None:
    daemon = setup(tmp_path, store, dispatcher)
    daemon.tick(at(10))
    [run_id] = store.run_ids("five")
    Agenda(store).set_paused("five", True)
    assert store.run_ids("five") == []
    assert not store.r.exists(store.keys.run(run_id), store.keys.step(run_id, "first"))
    assert not Job.exists(f"{run_id}-first-1", connection=dispatcher.connection)
    assert store.r.hlen(store.keys.dag_fires("five")) == 0
    daemon.tick(DUE)
    assert queued_ids(dispatcher) == [] and store.run_ids("five") == []
    Agenda(store).set_paused("five", False)  # unpaused after the fire: the latest missed one, once
    daemon.tick(DUE + timedelta(seconds=30))
    [again] = store.run_ids("five")
    assert store.run_record(again)["logical_date"] == DUE.isoformat() and again != run_id


def test_a_staged_run_cancelled_by_its_user_stays_cancelled(tmp_path, store, dispatcher) -> None:
    daemon = setup(tmp_path, store, dispatcher)
    daemon.tick(at(10))
    [run_id] = store.run_ids("five")
    assert store.cancel_run(run_id).state == "cancelled"
    Agenda(store).set_paused("five", True)  # takes back staged runs, but not one the user cancelled
    assert store.run_ids("five") == [run_id] and store.run_record(run_id)["state"] == "cancelled"
    assert not Job.exists(f"{run_id}-first-1", connection=dispatcher.connection)
    daemon.tick(DUE)
    assert queued_ids(dispatcher) == []


def test_a_new_version_replaces_a_staged_run(tmp_path, store, dispatcher) -> None:
    daemon = setup(tmp_path, store, dispatcher)
    daemon.tick(at(10))
    [old] = store.run_ids("five")
    submit_file(store, write_dag(tmp_path, DAG.replace("echo, two", "echo, three")), now=at(8))
    assert store.run_ids("five") == []
    daemon.tick(at(8))  # woken by the submit: stages the fire again, under version 2
    [new] = store.run_ids("five")
    assert new != old and store.run_record(new)["dag_version"] == "2"
    daemon.tick(DUE)
    assert queued_ids(dispatcher) == [f"{new}-first-1"]
    assert store.step_plan(new, "second").argv == ("echo", "three")


def test_an_outage_added_after_staging_defers_the_run(tmp_path, store, dispatcher) -> None:
    daemon = setup(tmp_path, store, dispatcher)
    daemon.tick(at(10))
    Agenda(store).put_outage("freeze", {"start": "2026-11-20T12:04", "end": "2026-11-20T12:07", "timezone": "UTC"})
    assert store.run_ids("five") == []
    daemon.tick(at(9))
    daemon.tick(DUE)
    assert store.run_ids("five") == [] and queued_ids(dispatcher) == []
    daemon.tick(datetime(2026, 11, 20, 12, 7, tzinfo=UTC))  # the end of the window
    [run_id] = store.run_ids("five")
    assert json.loads(store.run_record(run_id)["provenance"])["due_at"] == "2026-11-20T12:07:00+00:00"
    assert queued_ids(dispatcher) == [f"{run_id}-first-1"]


def test_stage_refuses_a_dag_that_changed_after_it_was_read(tmp_path, store, dispatcher) -> None:
    """The race unstage.lua cannot see: the scheduler read version 1, the user submitted version 2
    and took back what was staged, and only then does the scheduler stage under version 1."""
    setup(tmp_path, store, dispatcher)
    staging = Staging(store, dispatcher)
    epoch = staging.epoch()
    spec, _ = load_version(store, "five", 1, {})
    plan = plan_run(spec, version=1, params={}, now=DUE)
    submit_file(store, write_dag(tmp_path, DAG.replace("echo, two", "echo, three")), now=at(8))
    assert staging.stage([(plan, DUE.isoformat(), DUE)], epoch) == []
    assert store.run_ids("five") == []
    assert not Job.exists(f"{plan.run_id}-first-1", connection=dispatcher.connection)  # its job is gone too
    plan2 = plan_run(spec, version=2, params={}, now=DUE)
    Agenda(store).put_outage("x", {"start": "2027-01-01T00:00", "end": "2027-01-02T00:00", "timezone": "UTC"})
    assert staging.stage([(plan2, DUE.isoformat(), DUE)], epoch) == []  # calendars/outages changed since
    assert staging.stage([(plan2, DUE.isoformat(), DUE)], staging.epoch()) == [plan2.run_id]


def test_max_active_runs_dags_are_never_staged(tmp_path, store, dispatcher) -> None:
    daemon = setup(tmp_path, store, dispatcher, DAG.replace("name: five", "name: five\nmax_active_runs: 1"))
    assert daemon.tick(at(10)) == DUE.timestamp()
    assert store.run_ids("five") == []  # created at its time instead (a waiting run could start early)
    daemon.tick(DUE)
    assert len(store.run_ids("five")) == 1


def test_a_real_scheduler_never_starts_a_staged_step_early(tmp_path, settings, store, workers) -> None:
    """``ctl scheduler --lookahead 5`` with a worker, real time, a fire every 10 seconds: each run is
    staged ~5 s ahead, and its first step starts at or after its logical date, never before."""
    text = DAG.replace('"*/5 * * * *"', '"* * * * * */10"').replace("name: five", "name: tens")
    submit_file(store, write_dag(tmp_path, text))
    # What a taken-back run leaves on a queue: an id whose job is gone. The worker must skip it.
    connection = Dispatcher(settings.connect(decode=False), settings.prefix).connection
    connection.rpush(Queue("default", connection=connection).key, "taken-back-first-1")
    workers.start(1)
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    daemon = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "scheduler", "--lookahead", "5",
                               "--log-level", "INFO"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        early = None
        while time.monotonic() < deadline and early is None:  # a run seen more than 1 s before its due time
            records = [store.run_record(r) for r in store.run_ids("tens")]
            early = next((r for r in records if float(r.get("staged_due") or 0) - time.time() > 1), None)
            time.sleep(0.05)
        assert early is not None
        assert run_object(early)["state"] == "scheduled"  # as `ctl runs` shows it until then
        while time.monotonic() < deadline and len(store.run_ids("tens")) < 2:
            time.sleep(0.2)
        run_ids = sorted(store.run_ids("tens"))
        assert len(run_ids) >= 2
        records = [wait_for_run(store, run_id) for run_id in run_ids[:2]]
    finally:
        daemon.terminate()
        _, stderr = daemon.communicate(timeout=30)
    assert "staged 1 run(s)" in stderr
    for record in records:
        assert record["state"] == "success"
        first = next(s for s in store.step_records(record["run_id"]) if s["name"] == "first")
        started = datetime.fromisoformat(first["started_at"])
        assert started >= datetime.fromisoformat(record["logical_date"]), (started, record["logical_date"])
