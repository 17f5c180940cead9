"""Every trigger rule end to end, in containers, with real workers."""

from __future__ import annotations

from scheduler.engine import Engine
from scheduler.service import submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import write_dag

DAG = """
name: rules
defaults: {image: conveyor/busybox:local, command: ["true"]}
steps:
  ok: {}
  bad: {command: [sh, -c, "exit 1"]}
  skipped: {when: "ok.exit_code == 1", depends_on: [ok]}
  all_success: {depends_on: [ok, bad]}
  all_done: {depends_on: [ok, bad], trigger_rule: all_done}
  all_failed: {depends_on: [bad], trigger_rule: all_failed}
  one_success: {depends_on: [ok, bad], trigger_rule: one_success}
  one_failed: {depends_on: [ok, bad], trigger_rule: one_failed}
  none_failed: {depends_on: [ok, skipped], trigger_rule: none_failed}
  none_failed_bad: {depends_on: [ok, bad], trigger_rule: none_failed}
  after_skip: {depends_on: [skipped]}
  cleanup: {depends_on: [all_success, one_failed], trigger_rule: always}
"""


def test_every_rule_in_containers(tmp_path, store, dispatcher, workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, DAG))
    workers.start(2)
    run_id = Engine(store, dispatcher).create_run("rules", {})
    assert wait_for_run(store, run_id, timeout=90)["state"] == "failed"
    states = {s["name"]: s["state"] for s in store.step_records(run_id)}
    assert states == {
        "ok": "success", "bad": "failed", "skipped": "skipped",
        "all_success": "upstream_failed", "all_done": "success", "all_failed": "success",
        "one_success": "success", "one_failed": "success", "none_failed": "success",
        "none_failed_bad": "upstream_failed", "after_skip": "skipped", "cleanup": "success",
    }
