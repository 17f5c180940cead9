"""Dynamic fan-out (for_each): expansion in the transition that makes a step ready, instances with their
own attempts, max_parallel, aggregate outputs, empty lists, bad lists, max_items, reruns of one instance.
The store-level tests drive attempts through the engine by hand (no containers); the end-to-end ones
run real containers through real workers."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from scheduler import outputs as late
from scheduler.dispatch import Dispatcher, job_id
from scheduler.engine import Engine
from scheduler.errors import SpecError
from scheduler.model import StepState, mapped_instance
from scheduler.results import Ready
from scheduler.service import plan_rerun, submit_file
from scheduler.store import RunStore
from tests.conftest import Workers, wait_for_run
from tests.helpers import new_run, spec_from, write_dag

FANOUT = """
    name: data-fanout
    defaults: {image: conveyor/busybox:local}
    params: {extra: {type: string, default: '[]'}}
    steps:
      list: {command: ["true"], outputs: [files]}
      each:
        command: [echo, "{{ item }} #{{ index }}"]
        for_each: "{{ steps.list.outputs.files }}"
        max_parallel: 2
        outputs: [size]
        depends_on: [list]
      total: {command: [echo, "{{ steps.each.outputs.size }}"], depends_on: [each]}
      none:
        command: [echo, "{{ item }}"]
        for_each: "{{ params.extra }}"
      after_none: {command: ["true"], depends_on: [none], trigger_rule: all_done}
"""


class Hand:
    """Runs attempts by hand: start, then finish with an outcome and a record."""

    def __init__(self, store: RunStore, dispatcher: Dispatcher):
        self.engine = Engine(store, dispatcher)
        self.store = store
        self.ready: list[Ready] = []

    def take(self, ready) -> None:
        self.ready += list(ready)

    def run(self, item: Ready, outcome: str = "success", record: dict | None = None):
        started = self.engine.start(item.run_id, item.step, item.attempt, host="h", pid=1, worker="w", lease=30)
        assert started.status == "ok", (item, started)
        finished = self.store.finish_attempt(item.run_id, item.step, item.attempt, outcome, record or {})
        self.take(finished.ready)
        return finished


def states(store: RunStore, run_id: str) -> dict[str, str]:
    return {s["name"]: s["state"] for s in store.step_records(run_id)}


def test_a_step_expands_when_ready_and_ends_with_its_instances(store: RunStore, dispatcher: Dispatcher) -> None:
    spec = spec_from(FANOUT)
    plan, ready = new_run(store, spec)
    hand = Hand(store, dispatcher)
    by = {r.step: r for r in ready}
    assert set(by) == {"list", "after_none"}, "an empty list skips its step at once (its downstream goes on)"
    assert states(store, plan.run_id)["none"] == "skipped"
    hand.run(by["after_none"])
    first = by["list"]
    finished = hand.run(first, record={"outputs": json.dumps({"files": '["a.csv", {"k": 1}, "c/d \\"e\\""]'})})
    instances = [r.step for r in finished.ready if r.step.startswith("each[")]
    assert instances == ["each[0]", "each[1]"], "max_parallel: 2 of the 3 are queued"
    record = {s["name"]: s for s in store.step_records(plan.run_id)}
    assert record["each"]["state"] == "running" and record["each"]["instances"] == "3"
    assert record["each[2]"]["state"] == "pending"
    queued = {r.step: r for r in finished.ready}
    more = hand.run(queued["each[1]"], record={"outputs": json.dumps({"size": "2"})})
    assert [r.step for r in more.ready] == ["each[2]"], "a finished instance lets the next one in"
    last = hand.run(more.ready[0], record={"outputs": json.dumps({"size": "3/3"})})
    assert last.ready == () and states(store, plan.run_id)["total"] == "pending"
    done = hand.run(queued["each[0]"], record={"outputs": json.dumps({"size": "1"})})
    assert [r.step for r in done.ready] == ["total"]
    record = {s["name"]: s for s in store.step_records(plan.run_id)}
    assert record["each"]["state"] == "success"
    assert json.loads(json.loads(record["each"]["outputs"])["size"]) == ["1", "2", "3/3"]
    # What the instances and the aggregate step render, as the worker does it
    each = store.step_plan(plan.run_id, "each[2]")
    assert each.step == "each[2]"
    rendered = late.render_attempt(store, store.step_plan(plan.run_id, "each"), "each[2]")
    assert rendered.argv == ("echo", 'c/d "e" #2') and rendered.step == "each[2]"
    assert late.render_attempt(store, store.step_plan(plan.run_id, "each"), "each[1]").argv == ("echo", '{"k": 1} #1')
    total = late.render_attempt(store, store.step_plan(plan.run_id, "total"))
    assert json.loads(total.argv[1]) == ["1", "2", "3/3"]
    hand.run(done.ready[0])
    assert store.run_record(plan.run_id)["state"] == "success"


def test_instances_retry_and_fail_their_mapped_step(store, dispatcher) -> None:
    spec = spec_from("""
        name: data-fail
        steps:
          each: {image: i, command: [echo, "{{ item }}"], for_each: [1, 2], retries: 1}
          down: {image: i, command: ["true"], depends_on: [each]}
          cleanup: {image: i, command: ["true"], depends_on: [each], trigger_rule: all_done}
    """)
    plan, ready = new_run(store, spec)
    hand = Hand(store, dispatcher)
    assert sorted(r.step for r in ready) == ["each[0]", "each[1]"]
    by = {r.step: r for r in ready}
    retry = hand.run(by["each[0]"], "failed")
    assert retry.state == StepState.RETRYING
    final = hand.run(Ready(plan.run_id, "each[0]", 2, "high", None), "failed")
    assert states(store, plan.run_id)["down"] == "upstream_failed", "all_success fails at the first failed instance"
    assert final.ready == ()
    ended = hand.run(by["each[1]"])
    assert [r.step for r in ended.ready] == ["cleanup"], "all_done waits for every instance"
    assert states(store, plan.run_id)["each"] == "failed"
    hand.run(ended.ready[0])
    assert store.run_record(plan.run_id)["state"] == "failed"
    # Rerun one instance: its mapped step opens again, downstream steps wait for it
    rerun = plan_rerun(store, plan.run_id, step="each[0]")
    assert rerun.steps == ["each[0]", "down", "cleanup"]
    again = store.rerun(plan.run_id, rerun.steps)
    assert [(r.step, r.attempt) for r in again] == [("each[0]", 3)]
    assert states(store, plan.run_id)["each"] == "running"
    final = hand.run(again[0])
    assert sorted(r.step for r in final.ready) == ["cleanup", "down"]
    for item in final.ready:
        hand.run(item)
    assert store.run_record(plan.run_id)["state"] == "success"
    assert states(store, plan.run_id)["each"] == "success"


def test_a_bad_list_or_too_many_items_fail_the_step_with_a_message(store, dispatcher) -> None:
    spec = spec_from("""
        name: data-bad
        params: {list: {type: string}}
        steps:
          each: {image: i, command: [echo, "{{ item }}"], for_each: "{{ params.list }}", max_items: 2}
          after: {image: i, command: ["true"], depends_on: [each], trigger_rule: all_done}
    """)
    for value, message in [('{"a": 1}', "not a JSON list"), ("[1, 2, 3]", "3 items; the limit is 2 (max_items)"),
                           ("[1,", "not a JSON list")]:
        plan, ready = new_run(store, spec, {"list": value})
        record = {s["name"]: s for s in store.step_records(plan.run_id)}
        assert record["each"]["state"] == "failed" and message in record["each"]["error"]
        assert [r.step for r in ready] == ["after"]


def test_cancelling_a_mapped_step_cancels_its_waiting_instances(store, dispatcher) -> None:
    spec = spec_from("""
        name: data-cancel
        steps:
          each: {image: i, command: [echo, "{{ item }}"], for_each: [1, 2, 3], max_parallel: 1}
    """)
    plan, _ = new_run(store, spec)
    hand = Hand(store, dispatcher)
    hand.engine.start(plan.run_id, "each[0]", 1, host="h", pid=1, worker="w", lease=30)
    result = hand.engine.cancel_step(plan.run_id, "each")
    assert result.status == "stopping"
    assert states(store, plan.run_id) == {"each": "running", "each[0]": "running", "each[1]": "cancelled",
                                          "each[2]": "cancelled"}
    store.finish_attempt(plan.run_id, "each[0]", 1, "cancelled", {})
    assert states(store, plan.run_id)["each"] == "cancelled"
    assert store.run_record(plan.run_id)["state"] == "success"  # as for a plain step cancelled alone


def test_job_ids_of_instances_are_rq_safe_and_distinct() -> None:
    assert job_id("r", "load[12]", 3) == "r-load-3-i12"
    assert job_id("r", "load", 3) == "r-load-3"
    assert mapped_instance("load[12]") == ("load", 12) and mapped_instance("load") is None


def test_validation_of_for_each() -> None:
    with pytest.raises(SpecError) as caught:
        spec_from("""
            name: bad
            params: {day: {type: date}}
            steps:
              a: {image: i, command: [echo, "{{ item }}"]}
              b: {image: i, command: ["true"], for_each: "{{ params.day }}"}
              c: {image: i, command: ["true"], for_each: "files: {{ params.day }}", max_parallel: 2}
              d: {image: i, command: ["true"], max_parallel: 2}
        """)
    text = str(caught.value)
    assert "steps.a.command[1]: '{{ item }}' is only known in a step with for_each" in text
    assert "steps.b.for_each: param 'day' is a date, not a list" in text
    assert "steps.c.for_each: for_each takes a list" in text
    assert "steps.d.max_parallel: 'max_parallel' applies only to a step with for_each" in text


# --- end to end, Docker ---------------------------------------------------------------------------


def test_fan_out_over_an_output_in_containers(tmp_path, store: RunStore, dispatcher: Dispatcher,
                                              workers: Workers) -> None:
    submit_file(store, write_dag(tmp_path, """
        name: data-fanout-e2e
        defaults: {image: conveyor/busybox:local}
        steps:
          list:
            command: [sh, -c, 'echo "[\\"a b\\", \\"\\$(x)\\", \\"c\\"]" > $CONVEYOR_OUTPUTS/files']
            outputs: [files]
          each:
            command: [sh, -c, 'sleep 1; printf "%s" "$ITEM" | wc -c > $CONVEYOR_OUTPUTS/size; echo "$ITEM"']
            env: {ITEM: "{{ item }}"}
            for_each: "{{ steps.list.outputs.files }}"
            max_parallel: 2
            outputs: [size]
            depends_on: [list]
          total: {command: [echo, "{{ steps.each.outputs.size }}"], depends_on: [each]}
          empty: {command: [echo, "{{ item }}"], for_each: []}
    """))
    workers.start(3)
    run_id = Engine(store, dispatcher).create_run("data-fanout-e2e", {})
    assert wait_for_run(store, run_id, timeout=90)["state"] == "success"
    steps = {s["name"]: s for s in store.step_records(run_id)}
    assert steps["empty"]["state"] == "skipped"
    assert [store.read_log(run_id, f"each[{i}]", 1) for i in range(3)] == [b"a b\n", b"$(x)\n", b"c\n"]
    assert [json.loads(json.loads(steps["total"]["attempts"][0]["argv"])[1])] == [["3", "4", "1"]]
    spans = sorted((datetime.fromisoformat(a["started_at"]), datetime.fromisoformat(a["ended_at"]))
                   for i in range(3) for a in steps[f"each[{i}]"]["attempts"])
    # max_parallel 2 with three workers: the third instance starts only once one of the first two ended
    assert spans[2][0] >= min(spans[0][1], spans[1][1])
