"""`when:` conditions: refused at validation unless safe and known; evaluated per run."""

from __future__ import annotations

import pytest

from scheduler.conditions import ConditionError, evaluate
from scheduler.engine import Engine
from scheduler.errors import SpecError
from scheduler.service import submit_file
from tests.conftest import Workers, wait_for_run
from tests.helpers import spec_from, write_dag

DAG = """
name: cond
params: {full_refresh: {type: bool, default: false}, env: {type: string, default: dev}}
defaults: {image: conveyor/busybox:local}
steps:
  check: {command: [sh, -c, "exit 3"]}
  refresh: {command: [echo, refresh], when: "params.full_refresh == true"}
  on3: {command: [echo, three], depends_on: [check], trigger_rule: all_done, when: "check.exit_code == 3"}
  prod_only: {command: [echo, prod], when: "params.env in ['prod', 'staging'] and not params.full_refresh"}
  after_refresh: {command: [echo, after], depends_on: [refresh]}
"""


@pytest.mark.parametrize("text", ["__import__('os').system('id')", "params.env.upper() == 'X'", "params['env']",
                                  "(lambda: 1)()", "[x for x in params]", "params.nope == 1", "check.stdout == 1"])
def test_unsafe_or_unknown_conditions_are_refused(text: str) -> None:
    with pytest.raises(SpecError) as info:
        spec_from(DAG.replace("params.full_refresh == true", text.replace('"', "'")))
    assert "steps.refresh.when" in str(info.value)


def test_evaluation() -> None:
    ctx = {"params.x": True, "a.exit_code": 3, "a.state": "failed"}
    assert evaluate("params.x == true and a.exit_code == 3", ctx)
    assert evaluate("a.state in ['failed', 'upstream_failed'] or false", ctx)
    assert not evaluate("not params.x", ctx)
    assert not evaluate("a.exit_code > 'x'", ctx)  # a type mismatch is false, not an error
    with pytest.raises(ConditionError):
        evaluate("a.exit_code(1)", ctx)


def test_conditions_in_a_run(tmp_path, store, dispatcher, workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, DAG))
    workers.start(2)
    run_id = Engine(store, dispatcher).create_run("cond", {"env": "prod"})
    assert wait_for_run(store, run_id)["state"] == "failed"  # check exits 3
    states = {s["name"]: s["state"] for s in store.step_records(run_id)}
    assert states == {"check": "failed", "refresh": "skipped", "on3": "success", "prod_only": "success",
                      "after_refresh": "skipped"}
    assert store.read_log(run_id, "on3", 1) == b"three\n"
