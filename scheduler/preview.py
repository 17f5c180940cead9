"""What a run of a DAG file would run, without Redis or Docker: :func:`scheduler.plan.plan_run`'s
steps as plain data (``ctl render``). The one renderer is the planner; this only reads its output.

Secrets appear as the references the worker resolves (``{"TOKEN": {"env": "X"}}``), never values:
nothing here reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from scheduler.model import DagSpec
from scheduler.outages import Outage
from scheduler.plan import RunPlan, plan_run
from scheduler.spec import build_schedule, resolve_params


def render(spec: DagSpec, given: Mapping[str, Any], *, now: datetime, logical_date: datetime | None = None,
           calendars: Mapping[str, Any] | None = None, outages: Sequence[Outage] = ()) -> dict[str, Any]:
    """Every step of a run as the worker would get it. With a ``logical_date`` that is a fire time of
    the DAG's schedule, the data interval (``ds``...) is the schedule's, as the scheduler would plan it."""
    params = resolve_params(spec, given)
    interval = _interval(spec, logical_date, calendars, outages) if logical_date else (None, None)
    plan = plan_run(spec, version=0, params=params, now=now, logical_date=logical_date, interval=interval)
    return {
        "dag": spec.name, "run_id": plan.run_id, "logical_date": plan.logical_date.isoformat(),
        "data_interval_start": _iso(plan.data_interval_start), "data_interval_end": _iso(plan.data_interval_end),
        "params": dict(params), "steps": steps(plan),
    }


def steps(plan: RunPlan) -> list[dict[str, Any]]:
    """Each step's rendered image, argv, env (secrets as references), mounts and limits."""
    rendered = []
    for name, step in plan.steps.items():
        rendered.append({
            "step": name,
            "depends_on": list(plan.upstream.get(name, ())),
            "image": step.image,
            "argv": list(step.argv),
            "env": {**dict(step.env), **{key: dict(ref) for key, ref in step.secrets.items()}},
            "working_dir": step.working_dir,
            "mounts": [{"source": m.source, "target": m.target, "read_only": m.read_only} for m in step.mounts],
            "limits": {"cpus": step.cpus, "memory": step.memory, "timeout": step.timeout},
            "queue": step.queue,
            "retries": step.retries,
            **({"trigger_rule": step.trigger_rule} if step.trigger_rule != "all_success" else {}),
            **({"when": step.when} if step.when else {}),
            **({"pool": step.pool} if step.pool else {}),
        })
    return rendered


def _interval(spec: DagSpec, logical_date: datetime, calendars: Mapping[str, Any] | None,
              outages: Sequence[Outage]) -> tuple[datetime | None, datetime | None]:
    schedule = build_schedule(spec.document, calendars, outages)
    if schedule is None:
        return None, None
    from datetime import timedelta

    fires = schedule.next_fires(logical_date - timedelta(microseconds=1), n=1)
    if fires and fires[0].utc == logical_date:
        return fires[0].data_interval_start, fires[0].data_interval_end
    return None, None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
