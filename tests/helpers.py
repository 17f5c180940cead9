"""Small builders shared by tests."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

from scheduler.model import DagSpec
from scheduler.plan import RunPlan, plan_run
from scheduler.spec import load_bytes, resolve_params
from scheduler.store import RunStore

IMAGE = "conveyor/busybox:local"


def spec_from(text: str, file: str = "test.yaml") -> DagSpec:
    return load_bytes(textwrap.dedent(text), file)


def write_dag(folder: Path, text: str, name: str = "dag.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def new_run(store: RunStore, spec: DagSpec, params: dict | None = None, **kwargs) -> tuple[RunPlan, list]:
    """Submit the spec (as its YAML document) and create a run; returns the plan and the ready entries."""
    import json

    version, _ = store.submit_dag(spec.name, json.dumps(spec.document).encode(), spec.document)
    plan = plan_run(spec, version=version, params=resolve_params(spec, params or {}), now=datetime.now(UTC),
                    **kwargs)
    return plan, list(store.create_run(plan).ready)
