"""The scheduler daemon: runs created exactly once per fire, catchup, pause, max_active_runs,
waking on submit, and two real ``ctl scheduler`` processes over a simulated week."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from scheduler.agenda import Agenda
from scheduler.daemon import Scheduler
from scheduler.engine import Engine
from scheduler.service import submit_file
from scheduler.store import RunStore
from tests.helpers import write_dag

EVERY_5 = """
name: every5
schedule: {cron: "*/5 * * * *", catchup: CATCHUP, max_catchup: 3}
steps:
  s: {image: conveyor/busybox:local, command: [echo, "{{ ds }} {{ logical_date }}"]}
"""
T0 = datetime(2026, 11, 20, 12, 0, 30, tzinfo=UTC)


def runs_of(store: RunStore, dag: str) -> list[dict]:
    return sorted((store.run_record(r) for r in store.run_ids(dag, 10_000)), key=lambda r: r["logical_date"])


@pytest.fixture(params=[0.0, 15.0], ids=["plain", "staged"])
def lookahead(request) -> float:
    """Each test runs without staging and with it (runs due within 15 s are staged ahead)."""
    return request.param


def daemon_with(tmp_path, store, dispatcher, text: str, lookahead: float = 0.0) -> Scheduler:
    submit_file(store, write_dag(tmp_path, text), now=T0)
    return Scheduler(Engine(store, dispatcher), lookahead=lookahead)


def test_each_fire_once_with_its_interval(tmp_path, store, dispatcher, lookahead) -> None:
    daemon = daemon_with(tmp_path, store, dispatcher, EVERY_5.replace("CATCHUP", "true"), lookahead)
    assert daemon.tick(T0) == datetime(2026, 11, 20, 12, 5, tzinfo=UTC).timestamp() - lookahead
    assert runs_of(store, "every5") == []
    for minutes in (5, 5, 7, 11):  # the same instant twice, then later ones
        daemon.tick(datetime(2026, 11, 20, 12, minutes, tzinfo=UTC))
    runs = runs_of(store, "every5")
    assert [r["logical_date"] for r in runs] == ["2026-11-20T12:05:00+00:00", "2026-11-20T12:10:00+00:00"]
    assert runs[0]["data_interval_start"] == "2026-11-20T12:00:00+00:00"
    assert runs[0]["data_interval_end"] == "2026-11-20T12:05:00+00:00"
    assert {r["trigger"] for r in runs} == {"schedule"} and {r["priority"] for r in runs} == {"default"}
    plan = store.step_plan(runs[0]["run_id"], "s")
    assert plan.argv == ("echo", "2026-11-20 2026-11-20T12:05:00+00:00")


def test_catchup_creates_missed_runs_oldest_first_capped(tmp_path, store, dispatcher, lookahead) -> None:
    daemon = daemon_with(tmp_path, store, dispatcher, EVERY_5.replace("CATCHUP", "true"), lookahead)
    daemon.tick(T0 + timedelta(hours=1))  # the daemon was down for an hour: 12 fires missed
    assert [r["logical_date"][11:16] for r in runs_of(store, "every5")] == ["12:05", "12:10", "12:15"]


def test_without_catchup_only_the_latest_missed_run(tmp_path, store, dispatcher, lookahead) -> None:
    daemon = daemon_with(tmp_path, store, dispatcher, EVERY_5.replace("CATCHUP", "false"), lookahead)
    daemon.tick(T0 + timedelta(hours=1))
    assert [r["logical_date"][11:16] for r in runs_of(store, "every5")] == ["13:00"]


def test_two_schedulers_and_a_restart_never_duplicate(tmp_path, store, dispatcher, lookahead) -> None:
    first = daemon_with(tmp_path, store, dispatcher, EVERY_5.replace("CATCHUP", "true").replace("3", "100"), lookahead)
    second = Scheduler(Engine(store, dispatcher), lookahead=lookahead)
    moments = [T0 + timedelta(seconds=s) for s in range(0, 3601, 50)]  # some within 15 s of a fire
    for now in moments:
        first.tick(now)
        second.tick(now - timedelta(seconds=1))
        Scheduler(Engine(store, dispatcher), lookahead=lookahead).tick(now)  # a freshly restarted one, with no memory
    dates = [r["logical_date"] for r in runs_of(store, "every5")]
    assert len(dates) == len(set(dates)) == 12


def test_pause_and_unpause(tmp_path, store, dispatcher, lookahead) -> None:
    daemon = daemon_with(tmp_path, store, dispatcher, EVERY_5.replace("CATCHUP", "false"), lookahead)
    agenda = Agenda(store)
    agenda.set_paused("every5", True)
    assert daemon.tick(T0 + timedelta(minutes=20)) is None
    assert runs_of(store, "every5") == []
    agenda.set_paused("every5", False)
    daemon.tick(T0 + timedelta(minutes=31))
    assert [r["logical_date"][11:16] for r in runs_of(store, "every5")] == ["12:30"]


def test_max_active_runs_makes_scheduled_runs_wait(tmp_path, store, dispatcher) -> None:
    text = EVERY_5.replace("CATCHUP", "true").replace("name: every5", "name: every5\nmax_active_runs: 1")
    daemon = daemon_with(tmp_path, store, dispatcher, text)
    daemon.tick(T0 + timedelta(minutes=16))
    runs = runs_of(store, "every5")
    assert len(runs) == 3
    assert store.r.scard(store.keys.dag_active("every5")) == 1
    assert store.r.llen(store.keys.dag_waiting("every5")) == 2


def test_outage_defers_a_run_to_the_end_of_the_window(tmp_path, store, dispatcher) -> None:
    text = EVERY_5.replace("CATCHUP", "true").replace("max_catchup: 3}", "max_catchup: 50, outages: [lunch]}")
    text += "outages:\n  lunch: {start: '2026-11-20T12:08', end: '2026-11-20T12:21', timezone: UTC}\n"
    daemon = daemon_with(tmp_path, store, dispatcher, text)
    daemon.tick(T0 + timedelta(minutes=15))
    assert [r["logical_date"][11:16] for r in runs_of(store, "every5")] == ["12:05"]
    nxt = daemon.tick(T0 + timedelta(minutes=16))
    assert nxt == datetime(2026, 11, 20, 12, 21, tzinfo=UTC).timestamp()  # wakes at the window's end
    daemon.tick(datetime(2026, 11, 20, 12, 21, tzinfo=UTC))
    runs = runs_of(store, "every5")
    assert [r["logical_date"][11:16] for r in runs] == ["12:05", "12:10", "12:15", "12:20"]
    assert json.loads(runs[1]["provenance"])["due_at"] == "2026-11-20T12:21:00+00:00"


def test_two_ctl_schedulers_over_a_simulated_week(tmp_path, settings, store) -> None:
    """Two real daemons, a fake clock at 25,000x (8.7 days in ~30 s), the leader killed -9 halfway:
    every five-minute logical date between the first and the last cursor exactly once."""
    text = EVERY_5.replace("CATCHUP", "true").replace("max_catchup: 3", "max_catchup: 100000")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    submit_file(store, write_dag(tmp_path, text), now=start)
    first_cursor = Agenda(store).cursor("every5")
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    args = [sys.executable, "-m", "scheduler.cli.main", "scheduler", "--lease-ttl", "1",
            "--fake-clock", start.isoformat(), "--clock-speed", "25000", "--log-level", "WARNING"]
    procs = [subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        time.sleep(15)
        leader = store.r.get(store.keys.leader()).split("|")[0]
        victim = next(p for p in procs if f"-{p.pid}-" in leader)
        victim.send_signal(signal.SIGKILL)
        time.sleep(15)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            p.communicate(timeout=20)
    survivor = next(p for p in procs if p is not victim)
    assert survivor.returncode == 0
    last_cursor = Agenda(store).cursor("every5")
    assert last_cursor - first_cursor > timedelta(days=7)
    expected = []
    t = first_cursor.replace(second=0, microsecond=0) + timedelta(minutes=5 - first_cursor.minute % 5)
    while t <= last_cursor:
        expected.append(t.isoformat())
        t += timedelta(minutes=5)
    created = store.r.hgetall(store.keys.dag_fires("every5"))
    assert sorted(created) == expected
    assert len(store.run_ids("every5", 100_000)) == len(expected)


HEALTHY = """
name: healthy
schedule: {cron: "* * * * * *"}
steps:
  s: {image: conveyor/busybox:local, command: [echo, "{{ ts }}"]}
"""
# Passes the validation of today's stored versions but cannot be planned: the handler's env names a
# param that does not exist. (Validation now refuses it; the source is written to Redis directly, as an
# older Conveyor or a hand edit could have left it.)
BROKEN = """
name: broken
schedule: {cron: "* * * * * *"}
steps:
  s: {image: conveyor/busybox:local, command: [echo, x]}
on_failure: {image: conveyor/busybox:local, command: [echo, x], env: {X: "{{ params.nope }}"}}
"""


def test_a_dag_that_cannot_be_planned_never_stops_the_scheduler(tmp_path, settings, store) -> None:
    """A real ``ctl scheduler``: the broken DAG is logged and recorded as its error, and the healthy
    DAG keeps firing every second meanwhile."""
    import yaml

    submit_file(store, write_dag(tmp_path, HEALTHY))
    store.submit_dag("broken", BROKEN.encode(), yaml.safe_load(BROKEN), path="broken.yaml")
    Agenda(store).schedule_now("broken")
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    daemon = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "scheduler", "--lookahead", "0",
                               "--metrics-port", "0"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(store.run_ids("healthy", 100)) < 4:
            assert daemon.poll() is None, daemon.stderr.read() if daemon.stderr else ""
            time.sleep(0.2)
        assert len(store.run_ids("healthy", 100)) >= 4
        assert daemon.poll() is None  # still running
        assert store.run_ids("broken") == []
        error = store.dag_error("broken")
        assert error is not None and "nope" in error[0]
        shown = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "runs", "broken"], env=env,
                               capture_output=True, text=True, timeout=30)
        assert shown.returncode == 0 and "nope" in shown.stderr and "Traceback" not in shown.stderr
    finally:
        daemon.terminate()
        _, stderr = daemon.communicate(timeout=30)
    assert "broken" in stderr and "nope" in stderr and "Traceback" not in stderr
