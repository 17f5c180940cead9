"""``ctl rerun`` and ``ctl cancel --step``: resume where it broke, rerun the right things."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import typer

from scheduler.cli import common, views
from scheduler.cli.runs import finish
from scheduler.errors import ConveyorError

if TYPE_CHECKING:
    from scheduler.remote import Remote
    from scheduler.store import RunStore


def rerun(
    run_id: str = typer.Argument(..., help="The run's id."),
    step: str | None = typer.Option(None, "--step", "-s", help="Rerun this step (and what is downstream of it)."),
    no_downstream: bool = typer.Option(False, "--no-downstream", help="With --step: only that step."),
    everything: bool = typer.Option(False, "--all", help="Rerun every step."),
    latest: bool = typer.Option(False, "--latest", help="Use the DAG's latest version and image tags instead of "
                                "the run's pinned version and image ids."),
    resume: bool = typer.Option(False, "--resume", help="The steps find their last saved checkpoints "
                                "($CONVEYOR_CHECKPOINT) in place; without it they start clean."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run and exit 0 only if it succeeds."),
    output: common.Output = common.OutputOption,
) -> None:
    """Run steps of an ended run again (default: the failed and upstream_failed ones). History is kept."""
    from scheduler.cli import watch
    from scheduler.service import plan_rerun

    remote = common.remote()
    if remote:
        if resume:
            raise ConveyorError("ctl rerun --resume is not available through the server yet; run it against "
                                "Redis (without CONVEYOR_SERVER)")
        source: RunStore | Remote = remote
        done = remote.rerun(run_id, step=step, downstream=not no_downstream, everything=everything, latest=latest)
        steps, version, notes = done["rerun"], done["version"], done["notes"]
    else:
        engine = common.engine()
        source = engine.store
        chosen = plan_rerun(engine.store, run_id, step=step, downstream=not no_downstream, everything=everything,
                            latest=latest)
        engine.rerun(replace(chosen, resume=resume))
        steps, version, notes = chosen.steps, chosen.version, chosen.notes
    for note in notes:
        views.err.print(note, markup=False)
    if wait:
        finish(watch.follow(source, run_id), output)
        return
    if output == common.Output.json:
        views.print_json({"run_id": run_id, "rerun": steps, "version": version})
    else:
        views.out.print(f"run {run_id}: rerunning {', '.join(steps)}")
