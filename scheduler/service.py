"""The operations the CLI and the scheduler daemon share: submit a DAG file, create a run and
dispatch its first steps. Each is spec → plan → store → dispatch, in that order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scheduler.agenda import Agenda
from scheduler.dispatch import Dispatcher
from scheduler.errors import ParamError
from scheduler.model import DagSpec, Priority, Trigger
from scheduler.plan import plan_run
from scheduler.provenance import git_state
from scheduler.spec import load_bytes, load_file, resolve_params
from scheduler.store import RunStore

MAX_PARAMS_BYTES = 64 * 1024


@dataclass(frozen=True)
class Submitted:
    spec: DagSpec
    version: int
    created: bool
    sha256: str


def submit_file(store: RunStore, path: str | Path, *, now: datetime | None = None) -> Submitted:
    """Validate and store a DAG file (a new version only when its content changed); a scheduled DAG
    is put on the scheduler's agenda and the scheduler is woken."""
    spec, raw = load_file(path, store_calendars(store))
    version, created = store.submit_dag(spec.name, raw, spec.document, path=str(Path(path).resolve()),
                                        git=git_state(path), now=now)
    on_agenda = store.r.zscore(store.keys.agenda(), spec.name) is not None
    paused = store.r.hget(store.keys.dag(spec.name), "paused") == "1"
    if spec.schedule is not None and (created or not on_agenda) and not paused:
        Agenda(store).schedule_now(spec.name, now=now)
    return Submitted(spec, version, created, store.dag_version(spec.name, version)["sha256"])


def load_version(store: RunStore, name: str, version: int | None = None,
                 calendars: Mapping[str, Any] | None = None) -> tuple[DagSpec, dict[str, Any]]:
    """A stored DAG version, validated again from its exact source text."""
    record = store.dag_version(name, version)
    if calendars is None:
        calendars = store_calendars(store)
    where = record.get("path") or f"<{name} v{record['version']}>"
    return load_bytes(record["source"], where, calendars), record


def store_calendars(store: RunStore) -> dict[str, Any]:
    return {name: json.loads(spec) for name, spec in store.r.hgetall(store.keys.calendars()).items()}


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
    idempotency_key: str | None = None,
) -> str:
    """Create a run of the DAG's latest (or given) version and enqueue its ready steps; returns the run id
    (the existing run's id when ``idempotency_key`` was used before)."""
    spec, record = load_version(store, dag, version)
    return create_run_of(store, dispatcher, spec, record, given_params, trigger=trigger, priority=priority,
                         logical_date=logical_date, interval=interval, now=now, idempotency_key=idempotency_key)


def create_run_of(
    store: RunStore,
    dispatcher: Dispatcher,
    spec: DagSpec,
    record: Mapping[str, Any],
    given_params: Mapping[str, Any],
    *,
    trigger: Trigger = Trigger.MANUAL,
    priority: Priority | None = None,
    logical_date: datetime | None = None,
    interval: tuple[datetime | None, datetime | None] = (None, None),
    now: datetime | None = None,
    idempotency_key: str | None = None,
    due_at: datetime | None = None,
) -> str:
    """:func:`create_run` for a DAG version already loaded (the daemon keeps them compiled)."""
    params = resolve_params(spec, given_params)
    size = len(json.dumps(params))
    if size > MAX_PARAMS_BYTES:  # one bad run must not fill Redis: every step plan carries the params
        raise ParamError(f"{spec.name}: the params take {size:,} bytes; the limit is {MAX_PARAMS_BYTES:,}")
    plan = plan_run(
        spec, version=record["version"], params=params, now=now or datetime.now(UTC), trigger=trigger,
        priority=priority, logical_date=logical_date, interval=interval,
        provenance={"dag_sha256": record["sha256"], "git_commit": record.get("git_commit"),
                    "git_dirty": record.get("git_dirty"), "dag_path": record.get("path"),
                    **({"due_at": due_at.isoformat()} if due_at else {})},
    )
    run_id, ready = store.create_run(plan, idempotency_key=idempotency_key)
    dispatcher.enqueue(ready)
    return run_id
