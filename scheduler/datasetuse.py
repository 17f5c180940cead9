"""Who produces and who consumes each dataset, read from DAG specs alone (no Redis: ``ctl validate`` uses it).

A dataset that a step ``produces:`` but that no DAG lists in ``schedule: {on: [...]}`` triggers nothing: probably
a misspelt name on one side. ``ctl validate`` warns about it across every file it checks at once, so the
producer and its consumers are validated together (``ctl validate producer.yaml consumer.yaml``, or a folder).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from scheduler.errors import Problem
from scheduler.model import DagSpec
from scheduler.yamlsource import parse


def consumed(spec: DagSpec) -> list[str]:
    """The datasets a DAG's schedule waits for (``schedule: {on: [...]}``)."""
    return list(dict.fromkeys((spec.schedule or {}).get("on") or ()))


def produced(spec: DagSpec) -> dict[str, list[str]]:
    """Dataset -> the DAG's steps that produce it."""
    found: dict[str, list[str]] = {}
    for name, step in spec.steps.items():
        for dataset in step.produces:
            found.setdefault(dataset, []).append(name)
    return found


def unconsumed_warnings(loaded: Iterable[tuple[str, Mapping[str, Any], bytes]]) -> list[Problem]:
    """A warning at each ``produces:`` entry naming a dataset that none of the ``(file, valid document, raw
    bytes)`` given consumes. Only files with such an entry are parsed again (to place it). Documents, not
    specs: ``ctl validate`` builds none."""
    loaded = list(loaded)
    wanted = {dataset for _, document, _ in loaded for dataset in _consumed(document)}
    warnings = []
    for file, document, raw in loaded:
        orphans = [(step, index, dataset) for step, body in document["steps"].items()
                   for index, dataset in enumerate(body.get("produces") or ()) if dataset not in wanted]
        if not orphans:
            continue
        source = parse(raw, file, fast=False)  # exact places, as every other warning's
        for step, index, dataset in orphans:
            message = (f"dataset '{dataset}' is consumed by nobody: no DAG validated with this one has it in "
                       "schedule: {on: [...]}; validate its consumers with it (or their folder)")
            problem = source.problem(("steps", step, "produces", index), message)
            warnings.append(replace(problem, severity="warning"))
    return warnings


def _consumed(document: Mapping[str, Any]) -> list[str]:
    schedule = document.get("schedule")
    return list((schedule.get("on") or ()) if isinstance(schedule, dict) else ())
