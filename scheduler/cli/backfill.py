"""``ctl backfill``: runs for past data intervals, in batches, on the low-priority queue."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from scheduler.agenda import Agenda
from scheduler.backfill import plan_batches, plan_schedule_aligned
from scheduler.calendars import zone
from scheduler.cli import common, views
from scheduler.errors import ConveyorError
from scheduler.model import Priority, Trigger
from scheduler.schedules import Batch, ScheduleError
from scheduler.service import create_run_of, load_version, store_calendars
from scheduler.spec import build_schedule

POLL_SECONDS = 0.5
TERMINAL = {"success", "failed", "cancelled"}


class Reprocess(StrEnum):
    none = "none"  # only intervals with no run yet
    failed = "failed"  # also intervals whose latest run failed or was cancelled
    all = "all"  # every interval


def backfill(
    dag: str = typer.Argument(..., help="A submitted DAG's name."),
    start: str = typer.Option(..., "--start", help="First instant (YYYY-MM-DD or ISO time, DAG timezone)."),
    end: str = typer.Option(..., "--end", help="End of the range, excluded."),
    batch: str | None = typer.Option(None, "--batch", help="Interval of one run: 6h, 1d, 1w, 1mo (default: the "
                                     "DAG's batch, else 1d)."),
    schedule_aligned: bool = typer.Option(False, "--schedule-aligned",
                                          help="One run per schedule fire time in the range instead of batches."),
    reprocess: Reprocess = typer.Option(Reprocess.none, "--reprocess",
                                        help="Which intervals that already have a run get a new one."),
    max_active_runs: int | None = typer.Option(None, "--max-active-runs", min=1,
                                               help="At most this many backfill runs active at once."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; create nothing."),
    backwards: bool = typer.Option(False, "--backwards", help="Newest interval first."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Create the runs and return."),
    param: list[str] = typer.Option(None, "--param", "-p", help="KEY=VALUE, repeatable."),
    priority: Priority = typer.Option(Priority.LOW, help="Queue for the backfill's steps."),
    output: common.Output = common.OutputOption,
) -> None:
    """Create one run per data interval of [start, end), skipping intervals already done."""
    params = common.parse_params(param)
    current = common.settings()
    store = common.store(current)
    calendars = store_calendars(store)
    spec, record = load_version(store, dag, calendars=calendars)
    schedule = build_schedule(spec.document, calendars, Agenda(store).global_outages())
    tz = schedule.tz if schedule else zone("UTC")
    first, last = _when(start, "--start"), _when(end, "--end")
    try:
        if schedule_aligned:
            if schedule is None:
                raise ConveyorError(f"DAG '{dag}' has no schedule; --schedule-aligned needs one")
            fires = plan_schedule_aligned(schedule, first, last, backwards=backwards)
            intervals = [(f.data_interval_start, f.data_interval_end, f.logical_date) for f in fires]
        else:
            chosen = batch or spec.document.get("batch") or "1d"
            Batch.parse(chosen)
            intervals = [(s, e, e) for s, e in plan_batches(first, last, chosen, tz, backwards=backwards)]
    except ScheduleError as exc:
        raise ConveyorError(str(exc)) from None
    if not intervals:
        raise ConveyorError(f"no interval in [{start}, {end})")
    known = store.r.hgetall(store.keys.dag_intervals(dag))
    plan = []
    for s, e, logical in intervals:
        existing = known.get(s.isoformat())
        state = store.r.hget(store.keys.run(existing), "state") if existing else None
        create = (state is None or reprocess == Reprocess.all
                  or (reprocess == Reprocess.failed and state in {"failed", "cancelled"}))
        plan.append({"start": s.isoformat(), "end": e.isoformat(), "action": "create" if create else "skip",
                     "existing_run": existing, "existing_state": state, "_logical": logical, "_interval": (s, e)})
    if dry_run:
        shown = [{k: v for k, v in p.items() if not k.startswith("_")} for p in plan]
        if output == common.Output.json:
            views.print_json([{"start": p["start"], "end": p["end"], "action": p["action"]} for p in shown])
        else:
            for p in shown:
                note = f" (run {p['existing_run']}: {p['existing_state']})" if p["existing_run"] else ""
                views.out.print(f"{p['action']:6} [{p['start']}, {p['end']}){note}")
        return
    dispatcher = common.dispatcher(current)
    todo = [p for p in plan if p["action"] == "create"]
    created: list[str] = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=views.err, transient=False, disable=not views.err.is_terminal) as progress:
        task = progress.add_task(f"backfill {dag}", total=len(todo))
        pending = list(todo)
        while pending or (created and not no_wait and _active(store, created)):
            active = _active(store, created)
            while pending and (max_active_runs is None or len(active) < max_active_runs or no_wait):
                item = pending.pop(0)
                s, e = item["_interval"]
                run_id = create_run_of(store, dispatcher, spec, record, params, trigger=Trigger.BACKFILL,
                                       priority=priority, logical_date=item["_logical"], interval=(s, e))
                item["run_id"] = run_id
                created.append(run_id)
                active.append(run_id)
            if no_wait:
                progress.update(task, completed=len(created), description=f"backfill {dag}: created")
                break
            done = len(created) - len(_active(store, created))
            progress.update(task, completed=done)
            time.sleep(POLL_SECONDS)
    states = {rid: store.r.hget(store.keys.run(rid), "state") for rid in created}
    result = {
        "dag": dag, "created": len(created), "skipped": len(plan) - len(todo),
        "runs": [{"start": p["start"], "end": p["end"], "run_id": p.get("run_id"),
                  "state": states.get(p.get("run_id")) if p.get("run_id") else p["existing_state"],
                  "action": p["action"]} for p in plan],
    }
    if output == common.Output.json:
        views.print_json(result)
    else:
        failed = sum(1 for s in states.values() if s in {"failed", "cancelled"})
        views.out.print(f"{dag}: {len(created)} run(s) created, {result['skipped']} interval(s) skipped"
                        + ("" if no_wait else f", {failed} failed"))
    if not no_wait and any(s != "success" for s in states.values()):
        raise typer.Exit(1)


def _active(store: Any, run_ids: list[str]) -> list[str]:
    if not run_ids:
        return []
    with store.r.pipeline(transaction=False) as pipe:
        for rid in run_ids:
            pipe.hget(store.keys.run(rid), "state")
        states = pipe.execute()
    return [rid for rid, state in zip(run_ids, states, strict=True) if state not in TERMINAL]


def _when(text: str, option: str) -> date | datetime:
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        value = datetime.fromisoformat(text)
        return value if value.tzinfo is None else value.astimezone(UTC)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD) or an ISO time", param_hint=option) from None
