"""``ctl rerun``: resume where it broke, rerun the right things (see scheduler/rerunning.py)."""

from __future__ import annotations

import typer

from scheduler.cli import common, views, watch
from scheduler.cli.runs import finish
from scheduler.rerunning import rerun as rerun_steps


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
    done = rerun_steps(store, common.dispatcher(current), run_id, step=step, downstream=not no_downstream,
                       everything=everything, latest=latest)
    for note in done.notes:
        views.err.print(note, markup=False)
    if wait:
        finish(watch.follow(store, run_id), output)
        return
    if output == common.Output.json:
        views.print_json({"run_id": run_id, "rerun": done.steps, "version": done.version if not latest else None})
    else:
        views.out.print(f"run {run_id}: rerunning {', '.join(done.steps)}")
