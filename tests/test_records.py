"""Lean records (scheduler/records.py): plans stored once by content and counted, step and run hashes
without their defaults, and readers that see every field as before."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from scheduler.engine import Engine
from scheduler.model import StepState
from scheduler.plan import plan_run
from scheduler.records import STEP_DEFAULTS
from scheduler.service import load_version, submit_source
from scheduler.staging import Staging, unstage
from scheduler.store import CREATE_CHUNK

CHAIN = b"""name: leanchain
steps:
  a: {image: conveyor/busybox:local, command: [echo, a]}
  b: {image: conveyor/busybox:local, command: [echo, "{{ params.who }}"], depends_on: [a], retries: 2}
params:
  who: {default: world}
"""


def plan_keys(store) -> list[str]:
    return sorted(store.r.scan_iter(f"{store.prefix}:plan:*"))


def refs(store) -> dict[str, int]:
    return {d: int(n) for d, n in store.r.hgetall(store.keys.plan_refs()).items()}


def finish_run(store, run_id: str, steps: list[str]) -> None:
    for step in steps:
        assert store.start_attempt(run_id, step, 1, host="h", pid=1, worker="w").plan is not None
        store.finish_attempt(run_id, step, 1, "success", {"exit_code": 0})
    assert store.run_record(run_id)["state"] == "success"


def test_runs_that_render_alike_share_one_stored_plan_per_step(store, dispatcher) -> None:
    submit_source(store, CHAIN, "leanchain.yaml")
    engine = Engine(store, dispatcher)
    first, second = engine.create_run("leanchain", {}), engine.create_run("leanchain", {})
    other = engine.create_run("leanchain", {"who": "moon"})  # b renders differently: a plan of its own
    assert len(plan_keys(store)) == 3
    assert sorted(refs(store).values()) == [1, 2, 3]
    # The step hash names its plan, keeps no plan JSON and no field at its default.
    raw = store.r.hgetall(store.keys.step(first, "a"))
    assert len(raw["plan"]) == 32 and "argv" not in json.dumps(raw)
    assert not set(raw) & {k for k, v in STEP_DEFAULTS.items() if raw.get(k) == v}
    assert "upstream" not in raw and "rule" not in raw and "name" not in raw
    # Readers see every field, and the run's own plan (its run id, its rendering).
    b = next(s for s in store.step_records(other) if s["name"] == "b")
    assert b["upstream"] == '["a"]' and b["rule"] == "all_success" and b["retries"] == "2"
    assert store.step_plan(other, "b").argv == ("echo", "moon") and store.step_plan(other, "b").run_id == other
    assert store.step_plan(second, "b").argv == ("echo", "world")
    assert store.start_attempt(other, "a", 1, host="h", pid=1, worker="w").plan.run_id == other


def test_a_plan_goes_with_the_last_run_that_names_it(store, dispatcher) -> None:
    submit_source(store, CHAIN, "leanchain.yaml")
    engine = Engine(store, dispatcher)
    first, second = engine.create_run("leanchain", {}), engine.create_run("leanchain", {})
    for run_id in (first, second):
        finish_run(store, run_id, ["a", "b"])
    assert store.delete_run(first)
    assert len(plan_keys(store)) == 2 and set(refs(store).values()) == {1}
    assert store.step_plan(second, "a").argv == ("echo", "a")
    assert store.delete_run(second)
    assert plan_keys(store) == [] and refs(store) == {}


def test_a_rerun_with_a_new_plan_holds_it_and_lets_the_old_one_go(store, dispatcher) -> None:
    submit_source(store, CHAIN, "leanchain.yaml")
    engine = Engine(store, dispatcher)
    run_id = engine.create_run("leanchain", {})
    finish_run(store, run_id, ["a", "b"])
    old = store.r.hget(store.keys.step(run_id, "b"), "plan")
    pinned = store.step_plan(run_id, "b")
    store.rerun(run_id, ["b"], plans={"b": replace(pinned, pinned_image="sha256:" + "1" * 64, retries=0)})
    new = store.r.hget(store.keys.step(run_id, "b"), "plan")
    assert new != old and old not in refs(store) and refs(store)[new] == 1
    assert store.step_plan(run_id, "b").pinned_image == "sha256:" + "1" * 64
    assert store.r.hget(store.keys.step(run_id, "b"), "retries") is None  # back at its default: left out
    assert store.step_records(run_id)[1]["state"] == StepState.QUEUED


def test_a_large_run_written_in_chunks_keeps_its_plans(store, dispatcher) -> None:
    width = CREATE_CHUNK + 20
    text = "name: leanwide\nsteps:\n" + "".join(
        f"  s{i}: {{image: conveyor/busybox:local, command: [echo, '{i}']}}\n" for i in range(width))
    submit_source(store, text.encode(), "leanwide.yaml")
    run_id = Engine(store, dispatcher).create_run("leanwide", {})
    assert len(plan_keys(store)) == width
    assert all(store.r.ttl(k) == -1 for k in plan_keys(store)[:50])  # kept, no longer expiring
    assert store.step_plan(run_id, f"s{width - 1}").argv == ("echo", str(width - 1))


def test_a_staged_run_taken_back_gives_its_plans_back(store, dispatcher) -> None:
    submit_source(store, CHAIN, "leanchain.yaml")
    spec, record = load_version(store, "leanchain")
    due = datetime.now(UTC) + timedelta(minutes=5)
    plan = plan_run(spec, version=record["version"], params={"who": "staged"}, now=due)
    staging = Staging(store, dispatcher)
    assert staging.stage([(plan, "k1", due)], staging.epoch()) == [plan.run_id]
    assert len(plan_keys(store)) == 2
    assert unstage(store, ["leanchain"]) == 1
    assert plan_keys(store) == [] and refs(store) == {}


def test_a_step_recorded_before_the_lean_layout_still_runs(store, dispatcher) -> None:
    """A run in flight across the upgrade: its step hash holds the plan itself, signed the first way."""
    import hashlib
    import hmac

    from scheduler import signing

    submit_source(store, CHAIN, "leanchain.yaml")
    run_id = Engine(store, dispatcher).create_run("leanchain", {})
    old_text = signing.canonical(store.step_plan(run_id, "a").to_json())  # with its run id, as it was
    message = b"\0".join([b"conveyor-plan-v1", run_id.encode(), b"a", old_text.encode()])
    old_sig = hmac.new(b"conveyor-test-signing-key", message, hashlib.sha256).hexdigest()
    store.r.hset(store.keys.step(run_id, "a"), mapping={"plan": old_text, "plan_sig": old_sig})
    started = store.start_attempt(run_id, "a", 1, host="h", pid=1, worker="w")
    assert started.plan is not None and started.plan.argv == ("echo", "a")
    assert signing.verify(b"conveyor-test-signing-key", run_id, "a", started.plan_json, started.signature)
    assert not signing.verify(b"another-key", run_id, "a", started.plan_json, started.signature)
    assert store.step_plan(run_id, "a").argv == ("echo", "a")
    store.finish_attempt(run_id, "a", 1, "success", {"exit_code": 0})
    assert store.step_records(run_id)[1]["state"] == StepState.QUEUED


def test_a_start_and_finish_cost_a_bounded_number_of_redis_commands(store, dispatcher) -> None:
    """The cheaper state machine, counted rather than timed: the Redis commands the Lua scripts run for
    starting and finishing a step of a chain (INFO commandstats): 20.25 per transition, 32.5 before the lean
    layout; a regression back towards it fails here."""
    submit_source(store, CHAIN, "leanchain.yaml")
    run_id = Engine(store, dispatcher).create_run("leanchain", {})
    store.r.config_resetstat()
    finish_run(store, run_id, ["a", "b"])
    calls = {k: v["calls"] for k, v in store.r.info("commandstats").items()}
    others = ("cmdstat_eval", "cmdstat_config", "cmdstat_info", "cmdstat_hgetall", "cmdstat_script")
    scripts = sum(n for k, n in calls.items() if not k.startswith(others))
    assert scripts / 4 <= 21, calls  # 4 transitions (hgetall: finish_run's own reads of the run)


def test_a_pinned_rerun_refuses_to_sign_a_plan_changed_in_redis(store, dispatcher) -> None:
    """A rerun signs the stored plan again (pinned to its image id): only if it verifies first."""
    from scheduler.errors import ConveyorError
    from scheduler.service import plan_rerun

    submit_source(store, CHAIN, "leanchain.yaml")
    run_id = Engine(store, dispatcher).create_run("leanchain", {})
    store.start_attempt(run_id, "a", 1, host="h", pid=1, worker="w")
    store.finish_attempt(run_id, "a", 1, "failed", {"exit_code": 1, "image_id": "sha256:" + "2" * 64})
    assert plan_rerun(store, run_id, step="a").plans["a"].pinned_image == "sha256:" + "2" * 64
    key = store.keys.plan(store.r.hget(store.keys.step(run_id, "a"), "plan"))
    store.r.set(key, store.r.get(key).replace('"echo"', '"rm"'))
    with pytest.raises(ConveyorError, match="does not verify"):
        plan_rerun(store, run_id, step="a")
