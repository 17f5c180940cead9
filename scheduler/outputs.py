"""Upstream outputs in a step's command and env: rendered once, by the worker, when the attempt starts.

The plan stored at run creation keeps every argv or env entry that reads ``{{ steps.STEP.outputs.NAME }}``
as its template (``StepPlan.deferred``), with the values of the run's other names it uses
(``StepPlan.context``). :func:`render_attempt` is the one place that fills them in, for every runtime:
it reads the upstream steps' recorded outputs (their latest successful attempt, kept on the step) and
renders each template in one pass, so a value reaches the container verbatim, never rendered again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Protocol

from scheduler import templates
from scheduler.model import StepPlan


class OutputUnavailable(Exception):
    """A template reads an output its upstream step does not have (it did not succeed, e.g. under
    ``trigger_rule: all_done``). The attempt fails with reason ``output_unavailable``."""


class OutputSource(Protocol):
    def step_outputs(self, run_id: str, steps: list[str]) -> dict[str, dict[str, str]]: ...


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


def render(plan: StepPlan, outputs: Mapping[str, Mapping[str, str]]) -> StepPlan:
    """The plan with its deferred argv and env entries rendered (one pass) from ``outputs``."""
    if not plan.deferred:
        return plan
    context = {**plan.context, **output_context(outputs)}
    argv, env = list(plan.argv), dict(plan.env)
    for key, text in plan.deferred.items():
        try:
            value = templates.render(text, context)
        except templates.TemplateError:
            missing = [n for n in templates.names_in(text) if n not in context]
            step, name = templates.step_ref(missing[0]) or ("?", missing[0])
            raise OutputUnavailable(f"step '{step}' has no output '{name}' to read (it did not succeed in "
                                    "this run)") from None
        kind, _, where = key.partition(".")
        if kind == "argv":
            argv[int(where)] = value
        else:
            env[where] = value
    return replace(plan, argv=tuple(argv), env=env, deferred={}, context={})


def render_attempt(source: OutputSource, plan: StepPlan) -> StepPlan:
    """:func:`render` with the upstream outputs read from the store (a plan with nothing deferred is
    returned as it is, without a read)."""
    if not plan.deferred:
        return plan
    return render(plan, source.step_outputs(plan.run_id, referenced_steps(plan)))
