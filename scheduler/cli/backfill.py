"""``ctl backfill``: runs for past data intervals, in batches, on the low-priority queue."""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import TYPE_CHECKING

import typer

from scheduler.cli import common, views
from scheduler.model import Priority, Reprocess, Trigger, run_ended

if TYPE_CHECKING:
    from scheduler.store import RunStore

POLL_SECONDS = 0.5


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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from scheduler.service import plan_backfill

    params = common.parse_params(param)
    current = common.settings()
    engine = common.engine(current)
    store = engine.store
    planned = plan_backfill(store, dag, _when(start, "--start"), _when(end, "--end"), batch=batch,
                            schedule_aligned=schedule_aligned, reprocess=reprocess, backwards=backwards)
    spec, record, plan = planned.spec, planned.record, planned.intervals
    if dry_run:
        if output == common.Output.json:
            views.print_json([{k: v for k, v in p.to_json().items() if k in ("start", "end", "action")}
                              for p in plan])
        else:
            for p in plan:
                shown = p.to_json()
                note = f" (run {p.existing_run}: {p.existing_state})" if p.existing_run else ""
                views.out.print(f"{shown['action']:6} [{shown['start']}, {shown['end']}){note}")
        return
    todo = planned.todo
    created: list[str] = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=views.err, transient=False, disable=not views.err.is_terminal) as progress:
        task = progress.add_task(f"backfill {dag}", total=len(todo))
        pending = list(todo)
        while pending or (created and not no_wait and _active(store, created)):
            active = _active(store, created)
            while pending and (max_active_runs is None or len(active) < max_active_runs or no_wait):
                item = pending.pop(0)
                run_id = engine.create_run_of(spec, record, params, trigger=Trigger.BACKFILL, priority=priority,
                                              logical_date=item.logical_date, interval=(item.start, item.end))
                item.run_id = run_id
                created.append(run_id)
                active.append(run_id)
            if no_wait:
                progress.update(task, completed=len(created), description=f"backfill {dag}: created")
                break
            done = len(created) - len(_active(store, created))
            progress.update(task, completed=done)
            time.sleep(POLL_SECONDS)
    states = store.run_states(created) if created else {}
    result = {
        "dag": dag, "created": len(created), "skipped": len(plan) - len(todo),
        "runs": [{"start": p.start.isoformat(), "end": p.end.isoformat(), "run_id": p.run_id,
                  "state": states.get(p.run_id) if p.run_id else p.existing_state, "action": p.action}
                 for p in plan],
    }
    if output == common.Output.json:
        views.print_json(result)
    else:
        failed = sum(1 for s in states.values() if s in {"failed", "cancelled"})
        views.out.print(f"{dag}: {len(created)} run(s) created, {result['skipped']} interval(s) skipped"
                        + ("" if no_wait else f", {failed} failed"))
    if not no_wait and any(s != "success" for s in states.values()):
        raise typer.Exit(1)


def _active(store: RunStore, run_ids: list[str]) -> list[str]:
    if not run_ids:
        return []
    return [rid for rid, state in store.run_states(run_ids).items() if not run_ended(state)]


def _when(text: str, option: str) -> date | datetime:
    from scheduler.service import parse_instant

    try:
        return parse_instant(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a date (YYYY-MM-DD) or an ISO time", param_hint=option) from None
