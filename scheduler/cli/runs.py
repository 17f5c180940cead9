"""Commands about runs: trigger, runs, status, logs, cancel."""

from __future__ import annotations

import sys

import typer

from scheduler.cli import common, views
from scheduler.errors import NotFoundError
from scheduler.model import Priority, Trigger


def trigger(
    dag: str = typer.Argument(..., help="A submitted DAG's name."),
    param: list[str] = typer.Option(None, "--param", "-p", help="KEY=VALUE, repeatable."),
    priority: Priority | None = typer.Option(None, help="Queue for this run's steps (default: high)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run and exit 0 only if it succeeds."),
    output: common.Output = common.OutputOption,
) -> None:
    """Start a run of a submitted DAG now."""
    params = common.parse_params(param)
    engine = common.engine()
    store = engine.store
    run_id = engine.create_run(dag, params, trigger=Trigger.MANUAL, priority=priority)
    if not wait:
        if output == common.Output.json:
            views.print_json({"run_id": run_id})
        else:
            views.out.print(run_id, highlight=False)
        return
    views.err.print(f"run {run_id} created; waiting for it to end", highlight=False)
    from scheduler.cli import watch

    status = watch.follow(store, run_id)
    finish(status, output)


def finish(status: dict, output: common.Output) -> None:
    """Print a finished run's summary and exit 0 only when it succeeded."""
    if output == common.Output.json:
        views.print_json(status)
    else:
        views.out.print(views.steps_table(status))
    if status["state"] != "success":
        raise typer.Exit(1)


def runs(
    dag: str | None = typer.Argument(None, help="Only this DAG's runs."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many, newest first."),
    output: common.Output = common.OutputOption,
) -> None:
    """List runs, newest first."""
    store = common.store()
    if dag and dag not in store.dag_names():
        raise NotFoundError(store.unknown_dag(dag))
    records = [views.run_object(store.run_record(rid)) for rid in store.run_ids(dag, limit)]
    problem = store.dag_error(dag) if dag else None
    if problem:  # the scheduler could not evaluate or plan it: say so where people look
        views.err.print(f"DAG {dag}: the scheduler reports, since {problem[1]}: {problem[0]}", markup=False,
                        highlight=False)
    if output == common.Output.json:
        views.print_json(records)
    elif dag and records:
        steps = {r["run_id"]: {s["name"]: s["state"] for s in store.step_records(r["run_id"])} for r in records}
        views.out.print(views.grid_table(records, steps))
        views.out.print(views.runs_table(records, numbered=True))
    else:
        views.out.print(views.runs_table(records))


def status(
    run_id: str = typer.Argument(..., help="The run's id."),
    follow: bool = typer.Option(False, "--watch", "-w", help="Follow the run live until it ends; then exit 0 "
                                "only if it succeeded."),
    output: common.Output = common.OutputOption,
) -> None:
    """Show a run and its steps."""
    store = common.store()
    if follow:
        from scheduler.cli import watch

        finish(watch.follow(store, run_id), output)
        return
    data = views.status_object(store, run_id)
    if output == common.Output.json:
        views.print_json(data)
    else:
        views.out.print(views.steps_table(data))


def logs(
    run_id: str = typer.Argument(..., help="The run's id."),
    step: str = typer.Argument(..., help="The step's name."),
    attempt: int | None = typer.Option(None, "--attempt", "-a", min=1, help="Which attempt (default: the last)."),
) -> None:
    """Print a step attempt's output (stdout and stderr, as the container wrote them)."""
    from scheduler.runview import log_attempt

    store = common.store()
    number = log_attempt(store, run_id, step, attempt)
    sys.stdout.buffer.write(store.read_log(run_id, step, number))
    sys.stdout.flush()


def cancel(
    run_id: str = typer.Argument(..., help="The run's id."),
    step: str | None = typer.Option(None, "--step", "-s", help="Cancel only this step."),
) -> None:
    """Cancel a run (or one step): waiting steps are cancelled, running containers are stopped.

    Exit 0 when this call cancelled something; 1 when the run (or step) had already ended, however it
    ended (success, failed or cancelled)."""
    from scheduler.results import StepCancelStatus

    engine = common.engine()
    if step is not None:
        done = engine.cancel_step(run_id, step)
        if done.status is StepCancelStatus.DONE:
            views.err.print(f"step {step} of run {run_id} had already ended")
            raise typer.Exit(1)
        views.out.print(f"run {run_id} step {step}: {done.status.value}")
        return
    result = engine.cancel(run_id)
    if result.already_ended:
        views.err.print(f"run {run_id} had already ended: {result.state}", highlight=False)
        raise typer.Exit(1)
    note = f"; stopping {result.running} running step(s)" if result.running else ""
    views.out.print(f"run {run_id}: {result.state}{note}", highlight=False)
