"""A validated DAG + params → one run's plan: every step rendered, nothing left to compute later."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from scheduler import templates
from scheduler.graph import downstream_map, topological_order
from scheduler.model import HANDLERS, TRIGGER_PRIORITY, DagSpec, Priority, StepPlan, Trigger


@dataclass(frozen=True)
class RunPlan:
    run_id: str
    dag: str
    dag_version: int
    params: Mapping[str, Any]
    trigger: Trigger
    priority: Priority
    created_at: datetime
    logical_date: datetime
    data_interval_start: datetime | None
    data_interval_end: datetime | None
    max_active_runs: int | None
    order: tuple[str, ...]
    upstream: Mapping[str, tuple[str, ...]]
    downstream: Mapping[str, tuple[str, ...]]
    steps: Mapping[str, StepPlan]  # the steps of the graph, then the handler steps
    provenance: Mapping[str, Any] = field(default_factory=dict)
    handlers: Mapping[str, str] = field(default_factory=dict)  # handler step -> the run state that fires it
    slas: tuple[tuple[str, float], ...] = ()  # (step, or "" for the run's deadline; due epoch seconds)


def new_run_id(dag: str, now: datetime) -> str:
    """Readable, sortable and unique: ``etl-20261120T170000-3fa9c1`` (only [A-Za-z0-9_-])."""
    return f"{dag}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def context(spec: DagSpec, run_id: str, params: Mapping[str, Any], trigger: Trigger, logical_date: datetime,
            interval: tuple[datetime | None, datetime | None]) -> dict[str, Any]:
    """The flat template context of a run (``params.x`` keys are dotted)."""
    start, end = interval
    day = start or logical_date  # ds is the day whose data the run processes (as in Airflow 2)
    values: dict[str, Any] = {
        "run_id": run_id,
        "dag": spec.name,
        "trigger": trigger.value,
        "logical_date": logical_date.isoformat(),
        "ts": logical_date.isoformat(),
        "ds": day.strftime("%Y-%m-%d"),
        "ds_nodash": day.strftime("%Y%m%d"),
        "data_interval_start": (start or logical_date).isoformat(),
        "data_interval_end": (end or logical_date).isoformat(),
    }
    values.update({f"params.{k}": v for k, v in params.items()})
    return values


def plan_run(
    spec: DagSpec,
    *,
    version: int,
    params: Mapping[str, Any],
    now: datetime,
    trigger: Trigger = Trigger.MANUAL,
    priority: Priority | None = None,
    logical_date: datetime | None = None,
    interval: tuple[datetime | None, datetime | None] = (None, None),
    run_id: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> RunPlan:
    """Render every step of a run. ``priority`` given here (at trigger time) wins over the DAG's and steps'."""
    run_id = run_id or new_run_id(spec.name, now)
    logical_date = logical_date or now
    ctx = context(spec, run_id, params, trigger, logical_date, interval)
    run_priority = priority or spec.priority or TRIGGER_PRIORITY[trigger]
    upstream = {name: step.depends_on for name, step in spec.steps.items()}
    steps = {}
    for name, step in [*spec.steps.items(), *spec.handlers.items()]:
        step_ctx = {**ctx, "step": name}
        argv = tuple(templates.render(part, step_ctx) for part in step.command)
        if step.shell:
            argv = ("sh", "-c", *argv)
        queue = priority or step.priority or run_priority
        steps[name] = StepPlan(
            run_id=run_id,
            dag=spec.name,
            step=name,
            image=step.image,
            argv=argv,
            env={k: templates.render(v, step_ctx) for k, v in step.env.items()},
            working_dir=step.working_dir,
            timeout=step.timeout,
            cpus=step.cpus,
            memory=step.memory,
            pull=step.pull,
            queue=Priority(queue).value,
            retries=step.retries,
            backoff=step.backoff,
            tags={**spec.tags, **step.tags},
            mounts=step.mounts,
            secrets=step.secrets,
            trigger_rule=step.trigger_rule,
            when=step.when,
            pool=step.pool,
            pool_slots=step.pool_slots,
            network=step.network,
        )
    return RunPlan(
        run_id=run_id,
        dag=spec.name,
        dag_version=version,
        params=dict(params),
        trigger=trigger,
        priority=Priority(run_priority),
        created_at=now,
        logical_date=logical_date,
        data_interval_start=interval[0],
        data_interval_end=interval[1],
        max_active_runs=spec.max_active_runs,
        order=tuple(topological_order(upstream)),
        upstream={k: tuple(v) for k, v in upstream.items()},
        downstream={k: tuple(v) for k, v in downstream_map(upstream).items()},
        steps=steps,
        provenance=dict(provenance or {}),
        handlers={name: fires for _, (name, fires) in HANDLERS.items() if name in spec.handlers},
        slas=_slas(spec, now, logical_date),
    )


def _slas(spec: DagSpec, created: datetime, logical_date: datetime) -> tuple[tuple[str, float], ...]:
    """When each step SLA and the run's deadline fall due (epoch seconds)."""
    slas = [(name, created.timestamp() + step.sla) for name, step in spec.steps.items() if step.sla]
    deadline = spec.document.get("deadline")
    if deadline:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo((spec.schedule or {}).get("timezone", "UTC"))
        local = logical_date.astimezone(tz)
        hour, minute = map(int, deadline.split(":"))
        due = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if due < local:
            due += timedelta(days=1)
        slas.append(("", due.timestamp()))
    return tuple(slas)
