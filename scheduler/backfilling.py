"""A backfill against the store: which intervals of ``[start, end)`` get a run (the others already have
one), and creating those runs. ``ctl backfill`` and the server's ``POST /dags/{dag}/backfill`` share it;
the interval arithmetic itself is :mod:`scheduler.backfill` (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

from scheduler.agenda import Agenda
from scheduler.backfill import plan_batches, plan_schedule_aligned
from scheduler.calendars import zone
from scheduler.dispatch import Dispatcher
from scheduler.errors import ConveyorError
from scheduler.model import DagSpec, Priority, Trigger
from scheduler.schedules import Batch, ScheduleError
from scheduler.service import create_run_of, load_version, store_calendars
from scheduler.spec import build_schedule
from scheduler.store import RunStore

TERMINAL = {"success", "failed", "cancelled"}


class Reprocess(StrEnum):
    none = "none"  # only intervals with no run yet
    failed = "failed"  # also intervals whose latest run failed or was cancelled
    all = "all"  # every interval


@dataclass
class Interval:
    start: datetime
    end: datetime
    logical_date: datetime
    action: str  # create | skip
    existing_run: str | None
    existing_state: str | None
    run_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "action": self.action,
                "existing_run": self.existing_run, "existing_state": self.existing_state}


@dataclass
class BackfillPlan:
    dag: str
    spec: DagSpec
    record: Mapping[str, Any]
    intervals: list[Interval] = field(default_factory=list)

    @property
    def todo(self) -> list[Interval]:
        return [i for i in self.intervals if i.action == "create"]


def parse_instant(text: str) -> date | datetime:
    """``YYYY-MM-DD`` (local midnight in the DAG's timezone) or an ISO time; raises ValueError."""
    if len(text) == 10:
        return date.fromisoformat(text)
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is None else value.astimezone(UTC)


def plan_backfill(store: RunStore, dag: str, start: date | datetime, end: date | datetime, *,
                  batch: str | None = None, schedule_aligned: bool = False,
                  reprocess: Reprocess = Reprocess.none, backwards: bool = False) -> BackfillPlan:
    """Every interval of ``[start, end)`` and whether it gets a run; creates nothing."""
    calendars = store_calendars(store)
    spec, record = load_version(store, dag, calendars=calendars)
    schedule = build_schedule(spec.document, calendars, Agenda(store).global_outages())
    tz = schedule.tz if schedule else zone("UTC")
    try:
        if schedule_aligned:
            if schedule is None:
                raise ConveyorError(f"DAG '{dag}' has no schedule; --schedule-aligned needs one")
            fires = plan_schedule_aligned(schedule, start, end, backwards=backwards)
            cut = [(f.data_interval_start, f.data_interval_end, f.logical_date) for f in fires]
        else:
            chosen = batch or spec.document.get("batch") or "1d"
            Batch.parse(chosen)
            cut = [(s, e, e) for s, e in plan_batches(start, end, chosen, tz, backwards=backwards)]
    except ScheduleError as exc:
        raise ConveyorError(str(exc)) from None
    if not cut:
        raise ConveyorError(f"no interval in [{start}, {end})")
    known = store.r.hgetall(store.keys.dag_intervals(dag))
    plan = BackfillPlan(dag, spec, record)
    for s, e, logical in cut:
        existing = known.get(s.isoformat())
        state = store.r.hget(store.keys.run(existing), "state") if existing else None
        create = (state is None or reprocess == Reprocess.all
                  or (reprocess == Reprocess.failed and state in {"failed", "cancelled"}))
        plan.intervals.append(Interval(s, e, logical, "create" if create else "skip", existing, state))
    return plan


def create_interval_run(store: RunStore, dispatcher: Dispatcher, plan: BackfillPlan, interval: Interval,
                        params: Mapping[str, Any], priority: Priority = Priority.LOW) -> str:
    """Create the backfill run of one planned interval (its steps go to ``priority``'s queue)."""
    interval.run_id = create_run_of(store, dispatcher, plan.spec, plan.record, params, trigger=Trigger.BACKFILL,
                                    priority=priority, logical_date=interval.logical_date,
                                    interval=(interval.start, interval.end))
    return interval.run_id


def active(store: RunStore, run_ids: list[str]) -> list[str]:
    """The runs of ``run_ids`` that have not ended."""
    if not run_ids:
        return []
    with store.r.pipeline(transaction=False) as pipe:
        for rid in run_ids:
            pipe.hget(store.keys.run(rid), "state")
        states = pipe.execute()
    return [rid for rid, state in zip(run_ids, states, strict=True) if state not in TERMINAL]
