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
