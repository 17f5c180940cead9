"""Cross-DAG waits (wait_for): a step starts only once another DAG's run (or step) of the same logical date,
or its latest run, reached a state; it waits in Redis holding no worker, and fails with wait_timeout."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from scheduler.engine import Engine
from scheduler.errors import ConveyorError
from scheduler.runview import status_object
from scheduler.service import submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import spec_from, write_dag

UPSTREAM = """
name: data2-up
defaults: {image: conveyor/busybox:local}
steps:
  extract: {command: [sleep, "2"]}
  load: {command: [true], depends_on: [extract]}
"""

DOWNSTREAM = """
name: data2-down
defaults: {image: conveyor/busybox:local}
steps:
  report:
    command: [echo, reported]
    wait_for:
      - {dag: data2-up, interval: 1s}
      - {dag: data2-up, step: extract, interval: 1s}
  after: {command: [true], depends_on: [report]}
"""

NEVER = """
name: data2-never
defaults: {image: conveyor/busybox:local}
steps:
  report:
    command: [true]
    wait_for: [{dag: data2-up, logical_date: same, state: success, timeout: 2s, interval: 1s}]
"""

DAY = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_step_waits_for_another_dags_run_of_the_same_logical_date(tmp_path, store, dispatcher,
                                                                    workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, UPSTREAM, "up.yaml"))
    submit_file(store, write_dag(tmp_path, DOWNSTREAM, "down.yaml"))
    engine = Engine(store, dispatcher)
    workers.start(1)  # one worker: the waiting step must not hold it, or the upstream run could never run
    down = engine.create_run("data2-down", {}, logical_date=DAY)
    deadline = time.monotonic() + 30
    while store.step_fields(down, "report", "state")[0] != "waiting" and time.monotonic() < deadline:
        time.sleep(0.1)
    waiting = {s["name"]: s for s in status_object(store, down)["steps"]}["report"]
    assert waiting["state"] == "waiting"
    assert any("data2-up" in what and "no such run" in what for what in waiting["waiting_for"])
    other_day = engine.create_run("data2-up", {}, logical_date=datetime(2026, 3, 2, tzinfo=UTC))
    assert wait_for_run(store, other_day)["state"] == "success"
    time.sleep(2)
    assert store.step_fields(down, "report", "state")[0] == "waiting"  # another date's run does not count
    up = engine.create_run("data2-up", {}, logical_date=DAY)
    assert wait_for_run(store, up)["state"] == "success"
    assert wait_for_run(store, down)["state"] == "success"
    started = store.step_records(down)[0]["attempts"][-1]["started_at"]
    assert started > store.run_record(up)["ended_at"]
    assert store.read_log(down, "report", 1) == b"reported\n"


def test_a_wait_times_out(tmp_path, store, dispatcher, workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, NEVER))
    workers.start(1)
    rid = Engine(store, dispatcher).create_run("data2-never", {}, logical_date=DAY)
    assert wait_for_run(store, rid)["state"] == "failed"
    [step] = store.step_records(rid)
    assert step["state"] == "failed"
    assert step["attempts"][-1]["reason"] == "wait_timeout"
    assert "data2-up" in step["attempts"][-1]["error"]


def test_wait_for_is_validated_with_its_place() -> None:
    with pytest.raises(ConveyorError, match=r"test.yaml:7:\d+: .*logical_date"):
        spec_from(NEVER.replace("logical_date: same", "logical_date: yesterday"))
    with pytest.raises(ConveyorError, match=r"test.yaml:7:\d+: .*timeout"):
        spec_from(NEVER.replace("timeout: 2s", "timeout: soon"))
    assert spec_from(DOWNSTREAM).steps["report"].wait_for[0] == {
        "dag": "data2-up", "step": "", "logical_date": "same", "state": "success", "timeout": 21600.0,
        "interval": 1.0}
