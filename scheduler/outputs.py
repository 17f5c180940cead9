"""Upstream outputs (and a mapped instance's item) in a step's command and env: rendered once, by the
worker, when the attempt starts.

The plan stored at run creation keeps every argv or env entry that reads ``{{ steps.STEP.outputs.NAME }}``
as its template (``StepPlan.deferred``), with the values of the run's other names it uses
(``StepPlan.context``). :func:`render_attempt` is the one place that fills them in, for every runtime:
it reads the upstream steps' recorded outputs (their latest successful attempt, kept on the step) and
renders each template in one pass, so a value reaches the container verbatim, never rendered again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from scheduler import templates
from scheduler.model import HANDLERS, StepPlan, mapped_instance

HANDLER_STEPS = frozenset(name for name, _ in HANDLERS.values())
RUN_STATE_ENV = "CONVEYOR_RUN_STATE"


class OutputUnavailable(Exception):
    """A template reads an output its upstream step does not have (it did not succeed, e.g. under
    ``trigger_rule: all_done``). The attempt fails with reason ``output_unavailable``."""


class OutputRefused(OutputUnavailable):
    """An upstream output or a mapped step's items read from Redis do not verify against their signature
    (a worker with the signing key: scheduler/output_trust.py). Nothing is rendered; the attempt fails
    with reason ``output_signature``."""


class OutputSource(Protocol):
    def step_outputs(self, run_id: str, steps: list[str]) -> dict[str, dict[str, str]]: ...

    def mapped_items(self, run_id: str, step: str) -> str | None: ...

    def handler_facts(self, run_id: str) -> tuple[str, list[dict[str, object]]]: ...


def referenced_steps(plan: StepPlan) -> list[str]:
    """The upstream steps whose outputs the plan's deferred templates read."""
    found = []
    for text in plan.deferred.values():
        for name in templates.names_in(text):
            ref = templates.step_ref(name)
            if ref and ref[0] not in found:
                found.append(ref[0])
    return found


def output_context(outputs: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """``{step: {name: value}}`` as flat template names (``steps.STEP.outputs.NAME``)."""
    return {templates.output_name(step, name): value for step, values in outputs.items()
            for name, value in values.items()}


def item_context(items: str, index: int) -> dict[str, str]:
    """``{{ item }}``, ``{{ item.KEY }}`` and ``{{ index }}`` of instance ``index`` of a list (its JSON text):
    a string element as it is, anything else as JSON."""
    def text(value: object) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    item = json.loads(items)[index]
    context = {"index": str(index), "item": text(item)}
    if isinstance(item, dict):
        context.update({f"item.{key}": text(value) for key, value in item.items()})
    return context


def render(plan: StepPlan, outputs: Mapping[str, Mapping[str, str]],
           item: Mapping[str, str] | None = None) -> StepPlan:
    """The plan with its deferred argv and env entries rendered (one pass) from ``outputs`` (and, for an
    instance of a mapped step, its ``item`` context)."""
    if not plan.deferred:
        return plan
    context = {**plan.context, **output_context(outputs), **(item or {})}
    argv, env = list(plan.argv), dict(plan.env)
    for key, text in plan.deferred.items():
        try:
            value = templates.render(text, context)
        except templates.TemplateError:
            missing = [n for n in templates.names_in(text) if n not in context]
            if templates.is_item(missing[0]):
                raise OutputUnavailable(f"'{{{{ {missing[0]} }}}}': this instance's item has no such key") from None
            step, name = templates.step_ref(missing[0]) or ("?", missing[0])
            raise OutputUnavailable(f"step '{step}' has no output '{name}' to read (it did not succeed in "
                                    "this run)") from None
        kind, _, where = key.partition(".")
        if kind == "argv":
            argv[int(where)] = value
        else:
            env[where] = value
    return replace(plan, argv=tuple(argv), env=env, deferred={}, context={})


def render_attempt(source: OutputSource, plan: StepPlan, step: str | None = None) -> StepPlan:
    """:func:`render` with the upstream outputs read from the store; ``step`` is the step the attempt
    belongs to, an instance ``STEP[i]`` of a mapped step (whose plan it runs) included. A plan with
    nothing deferred is returned as it is, without a read."""
    instance = mapped_instance(step or plan.step)
    if instance is not None:
        plan = replace(plan, step=step or plan.step)
    extra: dict[str, str] = {}
    if plan.step in HANDLER_STEPS:  # a handler says what happened: the run's state and what failed in it
        state, failed = source.handler_facts(plan.run_id)
        plan = replace(plan, env={**plan.env, RUN_STATE_ENV: state})
        extra["failed_steps"] = json.dumps(failed)
    if not plan.deferred:
        return plan
    item = None
    if instance is not None:
        items = source.mapped_items(plan.run_id, instance[0])
        if items is None:
            raise OutputUnavailable(f"mapped step '{instance[0]}' has no list of items")
        item = item_context(items, instance[1])
    return render(plan, source.step_outputs(plan.run_id, referenced_steps(plan)), {**(item or {}), **extra})
