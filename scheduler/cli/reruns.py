"""``ctl rerun`` and ``ctl cancel --step``: resume where it broke, rerun the right things."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import typer

from scheduler.cli import common, views, watch
from scheduler.cli.runs import finish
from scheduler.errors import ConveyorError, NotFoundError
from scheduler.model import Trigger
from scheduler.plan import plan_run
from scheduler.reruns import select
from scheduler.service import load_version


def rerun(
    run_id: str = typer.Argument(..., help="The run's id."),
    step: str | None = typer.Option(None, "--step", "-s", help="Rerun this step (and what is downstream of it)."),
    no_downstream: bool = typer.Option(False, "--no-downstream", help="With --step: only that step."),
    everything: bool = typer.Option(False, "--all", help="Rerun every step."),
    latest: bool = typer.Option(False, "--latest", help="Use the DAG's latest version and image tags instead of "
                                "the run's pinned version and image ids."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run and exit 0 only if it succeeds."),
    output: common.Output = common.OutputOption,
) -> None:
    """Run steps of an ended run again (default: the failed and upstream_failed ones). History is kept."""
    current = common.settings()
    store = common.store(current)
    record = store.run_record(run_id)
    steps = store.step_records(run_id)
    states = {s["name"]: s["state"] for s in steps}
    if step is not None and step not in states:
        raise NotFoundError(f"run '{run_id}' has no step '{step}'; steps: {', '.join(states)}")
    spec, version = load_version(store, record["dag"], int(record["dag_version"]))
    chosen = select({n: s.depends_on for n, s in spec.steps.items()}, states, step=step,
                    downstream=not no_downstream, everything=everything,
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
    common.dispatcher(current).enqueue(ready)
    for note in notes:
        views.err.print(note, markup=False)
    if wait:
        finish(watch.follow(store, run_id), output)
        return
    if output == common.Output.json:
        views.print_json({"run_id": run_id, "rerun": chosen, "version": version["version"] if not latest else None})
    else:
        views.out.print(f"run {run_id}: rerunning {', '.join(chosen)}")


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
