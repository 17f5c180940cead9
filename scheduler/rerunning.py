"""Rerun steps of an ended run: pick them (:func:`scheduler.reruns.select`), pin or refresh their plans,
and queue them. ``ctl rerun`` and the server's ``POST /runs/{id}/rerun`` both call :func:`rerun`."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from scheduler.dispatch import Dispatcher
from scheduler.errors import ConveyorError, NotFoundError
from scheduler.model import Trigger
from scheduler.plan import plan_run
from scheduler.reruns import select
from scheduler.service import load_version
from scheduler.store import RunStore


@dataclass(frozen=True)
class Rerun:
    run_id: str
    steps: list[str]  # the steps queued again, in topological order
    version: int  # the DAG version the rerun uses
    notes: list[str]  # what a person should know (pinned images, a switched version)


def rerun(store: RunStore, dispatcher: Dispatcher, run_id: str, *, step: str | None = None,
          downstream: bool = True, everything: bool = False, latest: bool = False) -> Rerun:
    """Run again the failed steps of an ended run (default), one step (and, unless ``downstream=False``,
    what is downstream of it) or every step. Pinned to the run's DAG version and image ids unless
    ``latest``. Raises ConveyorError when there is nothing to rerun or the run has not ended."""
    record = store.run_record(run_id)
    steps = store.step_records(run_id)
    states = {s["name"]: s["state"] for s in steps}
    if step is not None and step not in states:
        raise NotFoundError(f"run '{run_id}' has no step '{step}'; steps: {', '.join(states)}")
    spec, version = load_version(store, record["dag"], int(record["dag_version"]))
    chosen = select({n: s.depends_on for n, s in spec.steps.items()}, states, step=step,
                    downstream=downstream, everything=everything,
                    rerun_before=[n for n, s in spec.steps.items() if s.rerun_before_downstream])
    if not chosen:
        raise ConveyorError(f"run {run_id}: nothing to rerun (no failed step); use --step S or --all")
    plans, notes = {}, []
    if latest:
        new_spec, new_version = load_version(store, record["dag"])
        missing = [s for s in chosen if s not in new_spec.steps]
        if missing:
            raise ConveyorError(f"DAG '{record['dag']}' version {new_version['version']} has no step "
                                f"{', '.join(missing)}; rerun without --latest")
        fresh = plan_run(new_spec, version=new_version["version"], params=json.loads(record["params"]),
                         now=datetime.now(UTC), trigger=Trigger(record["trigger"]), run_id=run_id,
                         logical_date=datetime.fromisoformat(record["logical_date"]),
                         interval=(_when(record.get("data_interval_start")), _when(record.get("data_interval_end"))))
        plans = {name: fresh.steps[name] for name in chosen}
        version = new_version
        notes.append(f"switching to DAG version {new_version['version']} (was {record['dag_version']}); "
                     f"images by tag: " + ", ".join(f"{n}={p.image}" for n, p in plans.items()))
    else:
        by_name = {s["name"]: s for s in steps}
        for name in chosen:
            last = by_name[name]["attempts"][-1] if by_name[name]["attempts"] else {}
            if last.get("image_id"):
                plans[name] = replace(store.step_plan(run_id, name), pinned_image=last["image_id"])
        notes.append(f"DAG version {record['dag_version']} as pinned; images pinned to the ids they ran: "
                     + (", ".join(f"{n}={p.pinned_image[:19]}" for n, p in plans.items()) or "none yet"))
    ready = store.rerun(run_id, chosen, plans=plans)
    dispatcher.enqueue(ready)
    return Rerun(run_id, chosen, int(version["version"]), notes)


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
