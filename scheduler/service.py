"""The operations the CLI and the scheduler daemon share: submit a DAG file, create a run and
dispatch its first steps. Each is spec → plan → store → dispatch, in that order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scheduler.dispatch import Dispatcher
from scheduler.model import DagSpec, Priority, Trigger
from scheduler.plan import plan_run
from scheduler.provenance import git_state
from scheduler.spec import load_bytes, load_file, resolve_params
from scheduler.store import RunStore


@dataclass(frozen=True)
class Submitted:
    spec: DagSpec
    version: int
    created: bool
    sha256: str


def submit_file(store: RunStore, path: str | Path, *, now: datetime | None = None) -> Submitted:
    """Validate and store a DAG file (a new version only when its content changed)."""
    spec, raw = load_file(path)
    version, created = store.submit_dag(spec.name, raw, spec.document, path=str(Path(path).resolve()),
                                        git=git_state(path), now=now)
    return Submitted(spec, version, created, store.dag_version(spec.name, version)["sha256"])


def load_version(store: RunStore, name: str, version: int | None = None) -> tuple[DagSpec, dict[str, Any]]:
    """A stored DAG version, validated again from its exact source text."""
    record = store.dag_version(name, version)
    return load_bytes(record["source"], record.get("path") or f"<{name} v{record['version']}>"), record


def create_run(
    store: RunStore,
    dispatcher: Dispatcher,
    dag: str,
    given_params: Mapping[str, Any],
    *,
    trigger: Trigger = Trigger.MANUAL,
    priority: Priority | None = None,
    version: int | None = None,
    logical_date: datetime | None = None,
    interval: tuple[datetime | None, datetime | None] = (None, None),
    now: datetime | None = None,
) -> str:
    """Create a run of the DAG's latest (or given) version and enqueue its ready steps; returns the run id."""
    spec, record = load_version(store, dag, version)
    params = resolve_params(spec, given_params)
    plan = plan_run(
        spec, version=record["version"], params=params, now=now or datetime.now(UTC), trigger=trigger,
        priority=priority, logical_date=logical_date, interval=interval,
        provenance={"dag_sha256": record["sha256"], "git_commit": record.get("git_commit"),
                    "git_dirty": record.get("git_dirty"), "dag_path": record.get("path")},
    )
    dispatcher.enqueue(store.create_run(plan))
    return plan.run_id
