"""Upstream outputs and fan-out items as a worker that holds the signing key may render them: verified.

Outputs and a mapped step's ``items`` are data in Redis that end up in a container's argv or env, so a
Redis writer without the key must not be able to choose them (scheduler/signing.py). :class:`VerifiedOutputs`
is the :class:`~scheduler.outputs.OutputSource` such a worker renders from; it raises
:class:`~scheduler.outputs.OutputRefused` (reason ``output_signature``) for anything that does not verify:

- a plain step's ``outputs``: against their ``outputs_sig`` (bound to run, step and attempt);
- a mapped step's outputs (JSON arrays gathered in Lua from its instances): rebuilt here from each
  instance's signed outputs (``STEP[i]``, as many as its verified items, the names its signed plan
  declares) and compared with the gathered ones; the rebuilt ones are what is rendered;
- a mapped step's ``items``: compared (as JSON) with the list its signed plan says it runs over: a literal
  list in the plan, a run param's value kept in the plan's ``context``, or an upstream output, itself
  verified as above.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from scheduler import records, signing
from scheduler.model import StepPlan, instance_name
from scheduler.outputs import OutputRefused


class SignedSource(Protocol):
    def step_fields(self, run_id: str, step: str, *fields: str) -> list[str | None]: ...

    def signed_outputs(self, run_id: str, steps: list[str]) -> list[tuple[str | None, str | None]]: ...

    def signed_plan(self, run_id: str, step: str) -> tuple[str | None, str]: ...

    def handler_facts(self, run_id: str) -> tuple[str, list[dict[str, Any]]]: ...


class VerifiedOutputs:
    """Reads outputs and items through ``store`` and returns only what verifies with ``key`` (one attempt's
    worth: what it verified once is kept)."""

    def __init__(self, store: SignedSource, key: bytes):
        self.store = store
        self.key = key
        self._plans: dict[str, StepPlan] = {}
        self._outputs: dict[str, dict[str, str]] = {}

    def handler_facts(self, run_id: str) -> tuple[str, list[dict[str, Any]]]:
        return self.store.handler_facts(run_id)  # not signed: see scheduler/signing.py

    def step_outputs(self, run_id: str, steps: list[str]) -> dict[str, dict[str, str]]:
        return {step: self.outputs_of(run_id, step) for step in steps}

    def mapped_items(self, run_id: str, step: str) -> str | None:
        """The mapped step's ``items`` once they equal the list its signed plan runs over."""
        [items] = self.store.step_fields(run_id, step, "items")
        if items is None:
            return None
        source = self._plan(run_id, step).for_each
        if source is None:
            raise OutputRefused(f"step '{step}' has items but its signed plan has no for_each")
        expected: Any
        if "items" in source:
            expected, origin = source["items"], "the list in its signed plan"
        elif "param" in source:
            expected = self._plan(run_id, step).context.get(f"params.{source['param']}")
            origin = f"param '{source['param']}' as its signed plan has it"
        else:
            expected = self.outputs_of(run_id, source["step"]).get(source["output"])
            origin = f"the signed output '{source['output']}' of step '{source['step']}'"
        if not isinstance(expected, str) or not _same_json(items, expected):
            raise OutputRefused(f"the items of mapped step '{step}' are not {origin}: they were changed in Redis")
        return items

    def outputs_of(self, run_id: str, step: str) -> dict[str, str]:
        """A step's outputs (``{}`` when it has none), verified."""
        if step not in self._outputs:
            outputs, signature, for_each = self.store.step_fields(run_id, step, "outputs", "outputs_sig", "for_each")
            if for_each is not None:
                self._outputs[step] = self._gathered(run_id, step, outputs)
            else:
                self._outputs[step] = self._signed(run_id, step, outputs, signature)
        return self._outputs[step]

    def _signed(self, run_id: str, step: str, outputs: str | None, signature: str | None) -> dict[str, str]:
        if outputs is None:
            return {}
        if not signature:
            raise OutputRefused(f"the outputs of step '{step}' have no signature and this worker verifies them "
                                "(CONVEYOR_SIGNING_KEY)")
        if not signing.verify_outputs(self.key, run_id, step, outputs, signature):
            raise OutputRefused(f"the outputs of step '{step}' do not verify: they were changed after they were "
                                "signed")
        return json.loads(outputs)

    def _gathered(self, run_id: str, step: str, gathered: str | None) -> dict[str, str]:
        """A mapped step's outputs rebuilt from its instances' signed ones, once they match the gathered."""
        plan = self._plan(run_id, step)
        if plan.for_each is None:
            raise OutputRefused(f"step '{step}' is marked mapped in Redis but its signed plan has no for_each")
        if gathered is None:
            return {}
        items = self.mapped_items(run_id, step)
        if items is None:
            raise OutputRefused(f"mapped step '{step}' has gathered outputs but no items")
        names = [instance_name(step, i) for i in range(len(json.loads(items)))]
        instances = [self._signed(run_id, name, outputs, signature)
                     for name, (outputs, signature) in zip(names, self.store.signed_outputs(run_id, names),
                                                          strict=True)]
        rebuilt = {name: lua_array([values.get(name) for values in instances]) for name in plan.outputs}
        try:
            stored = json.loads(gathered)
            same = (isinstance(stored, dict) and set(stored) == set(rebuilt)
                    and all(isinstance(stored[n], str) and _same_json(stored[n], rebuilt[n]) for n in rebuilt))
        except (ValueError, RecursionError):
            same = False
        if not same:
            raise OutputRefused(f"the gathered outputs of mapped step '{step}' are not its instances' signed "
                                "outputs: they were changed in Redis")
        return rebuilt

    def _plan(self, run_id: str, step: str) -> StepPlan:
        if step not in self._plans:
            text, signature = self.store.signed_plan(run_id, step)
            if text is None or not signing.verify(self.key, run_id, step, text, signature):
                raise OutputRefused(f"the plan of step '{step}' does not verify, so neither do its outputs or items")
            try:
                self._plans[step] = records.load_plan(run_id, text)
            except (ValueError, KeyError, TypeError) as exc:
                raise OutputRefused(f"the plan of step '{step}' is not a plan: {exc}") from None
        return self._plans[step]


def lua_array(values: list[str | None]) -> str:
    """A JSON array of strings (None: null) written as lib.lua's ``instance_ended`` writes a gathered output:
    only ``"``, ``\\`` and control characters escaped."""
    def text(value: str) -> str:
        return '"' + "".join('\\"' if c == '"' else "\\\\" if c == "\\" else f"\\u{ord(c):04x}"
                             if ord(c) < 32 or ord(c) == 127 else c for c in value) + '"'

    return "[" + ",".join("null" if value is None else text(value) for value in values) + "]"


def _same_json(a: str, b: str) -> bool:
    """The same JSON as rendered: compared as re-dumped text, so that ``1``, ``1.0`` and ``true`` (equal in
    Python) differ, and so do objects in another key order (``{{ item }}`` of an object keeps its order)."""
    try:
        return json.dumps(json.loads(a)) == json.dumps(json.loads(b))
    except (ValueError, RecursionError):
        return False
