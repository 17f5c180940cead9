"""Large runs are created in chunks (scheduler/lua/create_steps.lua, then create.lua) and still appear
whole or not at all; and the loader's linear-time path reads large DAGs (bench/large_dag.py measures)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from scheduler import store as store_module
from scheduler.errors import UnavailableError
from scheduler.plan import plan_run
from scheduler.spec import load_bytes
from scheduler.store import RunStore
from tests.helpers import IMAGE, new_run, spec_from

CHAIN = "name: wide\nsteps:\n" + "".join(
    f"  s{i}: {{image: {IMAGE}, command: [echo, '{i}']{', depends_on: [s0]' if i else ''}}}\n" for i in range(12))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CREATE_CHUNK", 5)  # 12 steps: written ahead in 3 chunks


def step_ttls(store: RunStore, run_id: str, names: list[str]) -> list[int]:
    return [store.r.ttl(store.keys.step(run_id, n)) for n in names]


def test_a_run_in_chunks_is_whole_and_kept(store: RunStore, small_chunks: None) -> None:
    spec = spec_from(CHAIN)
    plan, ready = new_run(store, spec)
    names = list(plan.order)
    assert [r.step for r in ready] == ["s0"]
    assert step_ttls(store, plan.run_id, names) == [-1] * 12  # persisted: they live as long as the run
    records = store.step_records(plan.run_id)
    assert [r["name"] for r in records] == names and {r["state"] for r in records[1:]} == {"pending"}
    assert store.step_plan(plan.run_id, "s7").argv == ("echo", "7")


def test_an_existing_fire_leaves_no_steps_behind(store: RunStore, small_chunks: None) -> None:
    spec = spec_from(CHAIN)
    first, _ = new_run(store, spec)
    again = plan_run(spec, version=1, params={}, now=datetime.now(UTC))
    key = "2026-11-20T00:00:00+00:00"
    assert store.create_run(replace(first, run_id=first.run_id + "x"), idempotency_key=key).created
    duplicate = store.create_run(again, idempotency_key=key)
    assert (duplicate.created, duplicate.run_id) == (False, first.run_id + "x")
    assert store.r.keys(f"{store.prefix}:run:{again.run_id}*") == []


def test_steps_that_expired_create_nothing(store: RunStore, small_chunks: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec = spec_from(CHAIN)
    plan = plan_run(spec, version=1, params={}, now=datetime.now(UTC))
    real = store._create

    def expire_one_then_create(*, args: list, client: object = None) -> object:
        store.r.delete(store.keys.step(plan.run_id, "s9"))  # as if creation had stalled past AHEAD_TTL
        return real(args=args, client=client)

    monkeypatch.setattr(store, "_create", expire_one_then_create)
    with pytest.raises(UnavailableError, match="s9"):
        store.create_run(plan)
    assert store.r.exists(store.keys.run(plan.run_id)) == 0
    assert store.r.keys(f"{store.prefix}:run:{plan.run_id}*") == []


def test_fifty_thousand_steps_load_in_linear_time() -> None:
    text = "name: big\ndefaults: {image: x}\nsteps:\n" + "".join(
        f"  s{i}: {{command: [echo, '{i}']{f', depends_on: [s{i - 1}]' if i else ''}}}\n" for i in range(50_000))
    spec = load_bytes(text, "big.yaml")
    assert len(spec.steps) == 50_000 and spec.steps["s49999"].depends_on == ("s49998",)
