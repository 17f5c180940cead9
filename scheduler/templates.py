"""Strict ``{{ name }}`` templates for commands and env values.

Hand-written on purpose: a template here is only a dotted name (no expressions, filters or
code), rendering is a single pass (a value that itself contains ``{{ x }}`` is data, never
rendered again), and every name is checked when the DAG is validated, not when the step runs.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

from scheduler.errors import InputError

_TOKEN = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?$")
_STEP_REF = re.compile(r"^steps\.([A-Za-z0-9][A-Za-z0-9_-]*)\.outputs\.([A-Za-z_][A-Za-z0-9_]*)$")

#: Names every run provides, beside ``params.*``.
BUILTINS = (
    "run_id",
    "dag",
    "step",
    "trigger",
    "logical_date",
    "ds",
    "ds_nodash",
    "ts",
    "data_interval_start",
    "data_interval_end",
    "datasets",  # JSON: the dataset events that triggered the run ([] unless its trigger is 'dataset')
)


class TemplateError(InputError):
    """A template names something unknown or is malformed; the message is for people."""


def names_in(text: str) -> list[str]:
    """The names a template uses; raises TemplateError for malformed ones."""
    if "{{" not in text:
        return []  # most strings of a DAG (and every one of a large one) are plain: no pattern to run
    names = []
    for match in _TOKEN.finditer(text):
        name = match.group(1).strip()
        if not _NAME.match(name) and not _STEP_REF.match(name):
            raise TemplateError(
                f"'{{{{{match.group(1)}}}}}' is not a template: use {{{{ params.NAME }}}} or {{{{ run_id }}}}")
        names.append(name)
    rest = _TOKEN.sub("", text)
    if "{{" in rest:
        raise TemplateError("'{{' is never closed with '}}'")
    return names


def only_name(text: str) -> str | None:
    """The name when ``text`` is one template and nothing else (``"{{ params.x }}"``), else None."""
    try:
        names = names_in(text)
    except TemplateError:
        return None
    return names[0] if len(names) == 1 and not _TOKEN.sub("", text).strip() else None


def check(text: str, known: Iterable[str]) -> None:
    """Raise TemplateError unless every name in ``text`` is known."""
    names = names_in(text)
    if not names:
        return
    known = list(known)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(sorted(known))}"
            raise TemplateError(f"unknown template variable '{name}'{hint}")


def step_ref(name: str) -> tuple[str, str] | None:
    """``steps.STEP.outputs.NAME`` → ``(STEP, NAME)``; None for any other name."""
    match = _STEP_REF.match(name)
    return (match.group(1), match.group(2)) if match else None


def output_name(step: str, output: str) -> str:
    """The template name of an upstream step's output, as :func:`step_ref` reads it."""
    return f"steps.{step}.outputs.{output}"


#: Names an instance of a mapped step (``for_each``) has: its element (``item.KEY`` of an object) and index.
ITEM_NAMES = ("item", "index")


def is_item(name: str) -> bool:
    return name in ITEM_NAMES or name.startswith("item.")


#: Names only a handler step (on_failure, ...) has: what went wrong in its run, as JSON.
HANDLER_NAMES = ("failed_steps",)


def is_late(name: str) -> bool:
    """Names only known when the attempt starts (upstream outputs, a mapped instance's item, a handler's
    failed steps), rendered then by the worker."""
    return step_ref(name) is not None or is_item(name) or name in HANDLER_NAMES


def known_names(param_names: Iterable[str]) -> list[str]:
    return [*BUILTINS, *(f"params.{p}" for p in param_names)]


def render(text: str, context: Mapping[str, Any]) -> str:
    """Replace every ``{{ name }}`` with its value from ``context`` (flat, dotted keys), in one pass."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1).strip()
        if name not in context:
            raise TemplateError(f"unknown template variable '{name}'")
        return to_text(context[name])

    return _TOKEN.sub(value, text)


def to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
