"""A validated DAG + params → one run's plan: every step rendered, nothing left to compute later."""

from __future__ import annotations

import difflib
import re
import secrets
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from scheduler import templates
from scheduler.errors import ParamError
from scheduler.graph import downstream_map, topological_order
from scheduler.model import HANDLERS, TRIGGER_PRIORITY, DagSpec, Priority, StepPlan, Trigger

# name[:tag][@digest]: lower-case path components, a tag of word characters, dots and dashes.
IMAGE_REFERENCE = re.compile(r"^[a-z0-9]+(?:[._/:-][a-z0-9]+)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                             r"(?:@[a-z0-9]+:[a-fA-F0-9]{32,})?$")


FAILURE_RULES = ("all_failed", "one_failed")


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
    # Steps that do not run (``ctl run --only``), each with the state it is created in: "success" for the
    # upstream of the chosen steps (treated as succeeded), "skipped" for the others.
    assumed: Mapping[str, str] = field(default_factory=dict)


def new_run_id(dag: str, now: datetime) -> str:
    """Readable, sortable and unique: ``etl-20261120T170000-3fa9c1`` (only [A-Za-z0-9_-])."""
    return f"{dag}-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def context(spec: DagSpec, run_id: str, params: Mapping[str, Any], trigger: Trigger, logical_date: datetime,
            interval: tuple[datetime | None, datetime | None], datasets: str = "[]") -> dict[str, Any]:
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
        "datasets": datasets,
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
    only: Collection[str] = (),
    datasets: str = "[]",
) -> RunPlan:
    """Render every step of a run. ``priority`` given here (at trigger time) wins over the DAG's and steps'.
    ``only``: run just these steps, everything upstream of them treated as succeeded (see :func:`assume`)."""
    run_id = run_id or new_run_id(spec.name, now)
    logical_date = logical_date or now
    ctx = context(spec, run_id, params, trigger, logical_date, interval, datasets)
    run_priority = priority or spec.priority or TRIGGER_PRIORITY[trigger]
    upstream = {name: step.depends_on for name, step in spec.steps.items()}
    steps = {}
    for name, step in [*spec.steps.items(), *spec.handlers.items()]:
        step_ctx = {**ctx, "step": name}
        command = (("sh", "-c") if step.shell else ()) + tuple(step.command)
        deferred = late_templates(command, step.env)
        argv = tuple(part if f"argv.{i}" in deferred else templates.render(part, step_ctx)
                     for i, part in enumerate(command))
        queue = priority or step.priority or run_priority
        steps[name] = StepPlan(
            run_id=run_id,
            dag=spec.name,
            step=name,
            image=_image(spec.name, name, step.image, ctx),
            argv=argv,
            env={k: v if f"env.{k}" in deferred else templates.render(v, step_ctx) for k, v in step.env.items()},
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
            outputs=step.outputs,
            for_each=step.for_each,
            max_parallel=step.max_parallel,
            max_items=step.max_items,
            sensor=step.sensor,
            wait_for=step.wait_for,
            produces=step.produces,
            deferred=deferred,
            context={n: step_ctx[n] for text in deferred.values() for n in templates.names_in(text)
                     if not templates.is_late(n)} | _for_each_param(step.for_each, step_ctx),
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
        assumed=assume(spec, only) if only else {},
    )


def assume(spec: DagSpec, only: Collection[str]) -> dict[str, str]:
    """The steps a run of just ``only`` does not run, and the state each is created in.

    Everything upstream of a chosen step is created ``success``: the chosen steps' trigger rules see
    succeeded upstream steps (``all_success`` runs, ``all_failed`` would not), and a step downstream
    of both a chosen and an assumed step waits only for the chosen one. Every other step is created
    ``skipped``: it does not run, whatever the chosen steps do. A chosen step that could only run when
    an upstream step fails, with all its upstream assumed, would never run: that is refused.
    """
    chosen = list(dict.fromkeys(only))
    unknown = [name for name in chosen if name not in spec.steps]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(spec.steps), n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else f"; steps: {', '.join(spec.steps)}"
        raise ParamError(f"{spec.name}: no step '{unknown[0]}' to run with --only{hint}")
    upstream = {name: step.depends_on for name, step in spec.steps.items()}
    ancestors: set[str] = set()
    todo = [up for name in chosen for up in upstream[name]]
    while todo:
        name = todo.pop()
        if name not in ancestors:
            ancestors.add(name)
            todo += upstream[name]
    ancestors -= set(chosen)
    for name in chosen:
        rule = spec.steps[name].trigger_rule
        if upstream[name] and set(upstream[name]) <= ancestors and rule in FAILURE_RULES:
            raise ParamError(f"{spec.name}: step '{name}' runs only when an upstream step fails (trigger_rule "
                             f"{rule}); with --only its upstream steps count as succeeded, so it would never "
                             "run: choose an upstream step too")
    return {name: "success" if name in ancestors else "skipped" for name in spec.steps if name not in chosen}


def _image(dag: str, step: str, image: str, ctx: Mapping[str, Any]) -> str:
    """The step's image with its ``{{ params.NAME }}`` templates rendered; a value that does not make an
    image reference (``myorg/etl:`` from an empty tag, spaces) is the run's params' fault."""
    if "{{" not in image:
        return image
    rendered = templates.render(image, ctx)
    if not IMAGE_REFERENCE.match(rendered):
        raise ParamError(f"{dag}: step '{step}': image {image!r} renders as {rendered!r}, which is not an image "
                         "reference; check the params it uses")
    return rendered


def _for_each_param(for_each: Mapping[str, str] | None, step_ctx: Mapping[str, Any]) -> dict[str, Any]:
    """A step mapped over a run param keeps the param's value in its (signed) plan: a worker with the key
    checks the list it expanded over against it (scheduler/output_trust.py), as run params are not signed."""
    name = f"params.{for_each['param']}" if for_each and "param" in for_each else None
    return {name: step_ctx[name]} if name and name in step_ctx else {}


def late_templates(argv: tuple[str, ...], env: Mapping[str, str]) -> dict[str, str]:
    """The argv and env entries that name something only known when the attempt starts (upstream
    outputs), by ``argv.N`` / ``env.KEY``: the plan keeps them as templates for the worker to render."""
    def late(text: str) -> bool:
        return any(templates.is_late(n) for n in templates.names_in(text))

    found = {f"argv.{i}": part for i, part in enumerate(argv) if late(part)}
    found.update({f"env.{k}": v for k, v in env.items() if late(v)})
    return found


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
