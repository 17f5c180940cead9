"""``ctl rerun`` and ``ctl cancel --step``: resume where it broke, rerun the right things."""

from __future__ import annotations

import typer

from scheduler.cli import common, views
from scheduler.cli.runs import finish


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
    from scheduler.cli import watch
    from scheduler.service import plan_rerun

    engine = common.engine()
    chosen = plan_rerun(engine.store, run_id, step=step, downstream=not no_downstream, everything=everything,
                        latest=latest)
    engine.rerun(chosen)
    for note in chosen.notes:
        views.err.print(note, markup=False)
    if wait:
        finish(watch.follow(engine.store, run_id), output)
        return
    if output == common.Output.json:
        views.print_json({"run_id": run_id, "rerun": chosen.steps, "version": chosen.version})
    else:
        views.out.print(f"run {run_id}: rerunning {', '.join(chosen.steps)}")
