"""on_failure / on_success / on_exit handler steps: containers too, run once when the run ends that way."""

from __future__ import annotations

from scheduler.engine import Engine
from scheduler.service import submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import new_run, spec_from, write_dag

DAG = """
name: handled
params: {fail: {type: bool, default: false}}
defaults: {image: conveyor/busybox:local}
steps:
  work: {command: [sh, -c, "test {{ params.fail }} = false"]}
on_failure: {command: [echo, "failed: {{ run_id }}"]}
on_success: {command: [echo, "all good"]}
on_exit: {command: [echo, "done either way"]}
"""


def handler_states(store, run_id: str) -> dict[str, str]:
    return {s["name"]: s["state"] for s in store.step_records(run_id) if s["name"].startswith("_")}


def test_handlers_fire_by_how_the_run_ended(tmp_path, store, dispatcher, workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, DAG))
    workers.start(2)
    ok = Engine(store, dispatcher).create_run("handled", {})
    bad = Engine(store, dispatcher).create_run("handled", {"fail": "true"})
    assert wait_for_run(store, ok)["state"] == "success"
    assert wait_for_run(store, bad)["state"] == "failed"
    assert handler_states(store, ok) == {"_on_failure": "skipped", "_on_success": "success", "_on_exit": "success"}
    assert handler_states(store, bad) == {"_on_failure": "success", "_on_success": "skipped", "_on_exit": "success"}
    assert store.read_log(bad, "_on_failure", 1) == f"failed: {bad}\n".encode()
    assert store.read_log(ok, "_on_exit", 1) == b"done either way\n"


def test_a_failing_handler_does_not_change_the_run_and_exit_runs_on_cancel(store) -> None:
    plan, _ = new_run(store, spec_from(DAG))
    rid = plan.run_id
    assert store.start_attempt(rid, "work", 1, host="h", pid=1, worker="w").status == "ok"
    store.cancel_run(rid)
    ready = store.finish_attempt(rid, "work", 1, "cancelled", {}).ready
    assert [r.step for r in ready] == ["_on_exit"]
    assert store.run_record(rid)["state"] == "running"  # until its handler ends
    assert store.start_attempt(rid, "_on_exit", 1, host="h", pid=1, worker="w").status == "ok"
    store.finish_attempt(rid, "_on_exit", 1, "failed", {})
    assert store.run_record(rid)["state"] == "cancelled"


TOLD = """
name: data2-told
defaults: {image: conveyor/busybox:local}
steps:
  good: {command: [true]}
  bad: {command: [sh, -c, "echo broken >&2; exit 7"], depends_on: [good]}
  never: {command: [true], depends_on: [bad]}
on_failure:
  command: [sh, -c, 'echo "$CONVEYOR_RUN_STATE"; echo "$FAILED"']
  env: {FAILED: "{{ failed_steps }}"}
"""


def test_a_handler_is_told_the_run_state_and_what_failed(tmp_path, store, dispatcher, workers: Workers) -> None:
    import json

    submit_file(store, write_dag(tmp_path, TOLD))
    workers.start(1)
    rid = Engine(store, dispatcher).create_run("data2-told", {})
    assert wait_for_run(store, rid)["state"] == "failed"
    state, failed = store.read_log(rid, "_on_failure", 1).decode().splitlines()
    assert state == "failed"
    assert json.loads(failed) == [{"step": "bad", "attempt": 1, "exit_code": 7, "reason": "exit_code",
                                  "error": json.loads(failed)[0]["error"]}]
    assert json.loads(failed)[0]["error"]  # the runner's own words for the failure


def test_failed_steps_is_known_only_in_handlers() -> None:
    import pytest

    from scheduler.errors import ConveyorError

    with pytest.raises(ConveyorError, match="failed_steps"):
        spec_from(TOLD.replace("good: {command: [true]}", "good: {command: [echo, '{{ failed_steps }}']}"))
    assert spec_from(TOLD).handlers["_on_failure"].env == {"FAILED": "{{ failed_steps }}"}
