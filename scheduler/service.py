"""Service functions the CLI, the scheduler daemon and the HTTP server share. Each returns data
(the commands only parse options and render): submitting a DAG file, loading a stored version,
choosing what a rerun runs, planning a backfill. State changes go through :mod:`scheduler.engine`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from scheduler import model
from scheduler.agenda import Agenda
from scheduler.backfill import plan_batches, plan_schedule_aligned
from scheduler.calendars import zone
from scheduler.engine import Rerun
from scheduler.errors import ConveyorError, NotFoundError, Problem
from scheduler.model import DagSpec, Trigger, mapped_instance
from scheduler.plan import plan_run
from scheduler.provenance import git_state
from scheduler.reruns import select
from scheduler.schedules import Batch
from scheduler.spec import build_schedule, load_bytes, load_file
from scheduler.store import RunStore


@dataclass(frozen=True)
class Submitted:
    spec: DagSpec
    version: int
    created: bool
    sha256: str


def submit_file(store: RunStore, path: str | Path, *, now: datetime | None = None,
                warnings: list[Problem] | None = None) -> Submitted:
    """Validate and store a DAG file (a new version only when its content changed); a scheduled DAG
    is put on the scheduler's agenda and the scheduler is woken. The file's warnings are appended to
    ``warnings`` (for the caller to show: they are never stored)."""
    spec, raw = load_file(path, store_calendars(store), warnings=warnings)
    return _submitted(store, spec, raw, str(Path(path).resolve()), git_state(path), now)


def submit_source(store: RunStore, raw: bytes, where: str, *, calendars: Mapping[str, Any] | None = None,
                  now: datetime | None = None) -> Submitted:
    """:func:`submit_file` for content already read (a synced folder's file, shown as ``where``)."""
    spec = load_bytes(raw, where, store_calendars(store) if calendars is None else calendars)
    return _submitted(store, spec, raw, where, git_state(where), now)


def _submitted(store: RunStore, spec: DagSpec, raw: bytes, path: str, git: Mapping[str, Any] | None,
               now: datetime | None) -> Submitted:
    version, created = store.submit_dag(spec.name, raw, spec.document, path=path, git=git, now=now)
    agenda = Agenda(store)
    if agenda.is_deactivated(spec.name):  # its file is back (or it was submitted by hand): active again
        agenda.set_active(spec.name, True)
    if spec.schedule is not None and (created or not agenda.is_scheduled(spec.name)) \
            and not agenda.is_paused(spec.name):
        agenda.schedule_now(spec.name, now=now)
    return Submitted(spec, version, created, store.dag_version(spec.name, version)["sha256"])


def load_version(store: RunStore, name: str, version: int | None = None,
                 calendars: Mapping[str, Any] | None = None) -> tuple[DagSpec, dict[str, Any]]:
    """A stored DAG version, its signature checked (when the store holds the key) and validated again from
    its exact source text."""
    record = store.verified_dag_version(name, version)
    if calendars is None:
        calendars = store_calendars(store)
    where = record.get("path") or f"<{name} v{record['version']}>"
    return load_bytes(record["source"], where, calendars), record


def store_calendars(store: RunStore) -> dict[str, Any]:
    return Agenda(store).calendars()


# --- reruns ---------------------------------------------------------------------------------------


def plan_rerun(store: RunStore, run_id: str, *, step: str | None = None, downstream: bool = True,
               everything: bool = False, latest: bool = False, now: datetime | None = None) -> Rerun:
    """Which steps of an ended run run again and with what plans (see :mod:`scheduler.reruns`).

    By default a rerun is pinned: the run's DAG version, and each step's image by the id it ran
    (a moved tag does not change what reruns). ``latest`` takes the DAG's latest version and
    image tags instead. Raises a :class:`ConveyorError` naming the problem when nothing fits."""
    from dataclasses import replace

    record = store.run_record(run_id)
    steps = store.step_records(run_id)
    states = {s["name"]: s["state"] for s in steps}
    if step is not None and step not in states:
        raise NotFoundError(f"run '{run_id}' has no step '{step}'; steps: {', '.join(states)}")
    spec, version = load_version(store, record["dag"], int(record["dag_version"]))
    # An instance STEP[i] of a mapped step is rerun alone, in its mapped step's place (and, by default,
    # with what is downstream of the mapped step).
    instance = mapped_instance(step) if step is not None else None
    chosen = select({n: s.depends_on for n, s in spec.steps.items()}, states,
                    step=instance[0] if instance else step, downstream=downstream, everything=everything,
                    rerun_before=[n for n, s in spec.steps.items() if s.rerun_before_downstream])
    if instance is not None and step is not None:
        chosen = [step if name == instance[0] else name for name in chosen]
    if not chosen:
        raise ConveyorError(f"run {run_id}: nothing to rerun (no failed step); use --step S or --all")
    plans: dict[str, Any] = {}
    if latest:
        new_spec, new_version = load_version(store, record["dag"])
        planned = [(mapped_instance(s) or (s,))[0] for s in chosen]  # an instance runs its mapped step's plan
        missing = [s for s in planned if s not in new_spec.steps]
        if missing:
            raise ConveyorError(f"DAG '{record['dag']}' version {new_version['version']} has no step "
                                f"{', '.join(missing)}; rerun without --latest")
        fresh = plan_run(new_spec, version=new_version["version"], params=store.verified_params(record),
                         now=now or datetime.now(UTC), trigger=Trigger(record["trigger"]), run_id=run_id,
                         logical_date=datetime.fromisoformat(record["logical_date"]),
                         interval=(_when(record.get("data_interval_start")), _when(record.get("data_interval_end"))))
        plans = {name: fresh.steps[name] for name in planned}
        note = (f"switching to DAG version {new_version['version']} (was {record['dag_version']}); "
                "images by tag: " + ", ".join(f"{n}={p.image}" for n, p in plans.items()))
        return Rerun(run_id, chosen, plans, [note], None)
    by_name = {s["name"]: s for s in steps}
    for name in chosen:
        last = by_name[name]["attempts"][-1] if by_name[name]["attempts"] else {}
        if last.get("image_id") and mapped_instance(name) is None:  # instances run their mapped step's plan
            plans[name] = replace(store.verified_plan(run_id, name), pinned_image=last["image_id"])
    note = (f"DAG version {record['dag_version']} as pinned; images pinned to the ids they ran: "
            + (", ".join(f"{n}={p.pinned_image[:19]}" for n, p in plans.items()) or "none yet"))
    return Rerun(run_id, chosen, plans, [note], version["version"])


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- backfill -------------------------------------------------------------------------------------


Reprocess = model.Reprocess  # its home is the model (the CLI's options need it without this module)


@dataclass
class BackfillItem:
    """One data interval of a backfill: create a run for it, or skip it (it has one already)."""

    start: datetime
    end: datetime
    logical_date: datetime
    create: bool
    existing_run: str | None = None
    existing_state: str | None = None
    run_id: str | None = None  # once created

    @property
    def action(self) -> str:
        return "create" if self.create else "skip"

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "action": self.action,
                "existing_run": self.existing_run, "existing_state": self.existing_state}


@dataclass
class BackfillPlan:
    dag: str
    spec: DagSpec
    record: Mapping[str, Any]
    intervals: list[BackfillItem]

    @property
    def todo(self) -> list[BackfillItem]:
        return [i for i in self.intervals if i.create]


def parse_instant(text: str) -> date | datetime:
    """``YYYY-MM-DD`` (local midnight in the DAG's timezone) or an ISO time; raises ValueError."""
    if len(text) == 10:
        return date.fromisoformat(text)
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is None else value.astimezone(UTC)


def plan_backfill(store: RunStore, dag: str, start: date | datetime, end: date | datetime, *,
                  batch: str | None = None, schedule_aligned: bool = False, reprocess: Reprocess = Reprocess.none,
                  backwards: bool = False) -> BackfillPlan:
    """Every data interval of ``[start, end)`` of the DAG's latest version and whether it gets a run:
    batches (the DAG's ``batch``, else ``1d``) or, ``schedule_aligned``, the schedule's own fires.
    Creates nothing (:meth:`scheduler.engine.Engine.create_run_of` does, per item)."""
    calendars = store_calendars(store)
    spec, record = load_version(store, dag, calendars=calendars)
    schedule = build_schedule(spec.document, calendars, Agenda(store).global_outages())
    tz = schedule.tz if schedule else zone("UTC")
    if schedule_aligned and schedule is None:
        raise ConveyorError(f"DAG '{dag}' has no schedule; --schedule-aligned needs one")
    if schedule is not None and schedule_aligned:
        fires = plan_schedule_aligned(schedule, start, end, backwards=backwards)
        intervals = [(f.data_interval_start, f.data_interval_end, f.logical_date) for f in fires]
    else:  # a ScheduleError (a bad batch or range) is a ConveyorError: it reaches the user as is
        chosen = batch or spec.document.get("batch") or "1d"
        Batch.parse(chosen)
        intervals = [(s, e, e) for s, e in plan_batches(start, end, chosen, tz, backwards=backwards)]
    if not intervals:
        raise ConveyorError(f"no interval in [{start}, {end})")
    known = store.interval_runs(dag)
    states = store.run_states(list(known.values())) if known else {}
    items = []
    for s, e, logical in intervals:
        existing = known.get(s.isoformat())
        state = states.get(existing) if existing else None
        create = (state is None or reprocess == Reprocess.all
                  or (reprocess == Reprocess.failed and state in {"failed", "cancelled"}))
        items.append(BackfillItem(s, e, logical, create, existing, state))
    return BackfillPlan(dag, spec, record, items)
