"""Commands about runs: trigger, runs, status, logs, cancel."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

import typer

from scheduler.cli import common, views
from scheduler.errors import NotFoundError
from scheduler.model import TERMINAL_STEP_STATES, Priority, Trigger

if TYPE_CHECKING:  # the rest is imported by the commands that use it (ctl --help stays light: test_startup)
    from scheduler.remote import Remote
    from scheduler.store import RunStore


def trigger(
    dag: str = typer.Argument(..., help="A submitted DAG's name."),
    param: list[str] = typer.Option(None, "--param", "-p", help="KEY=VALUE, repeatable."),
    priority: Priority | None = typer.Option(None, help="Queue for this run's steps (default: high)."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run and exit 0 only if it succeeds."),
    output: common.Output = common.OutputOption,
) -> None:
    """Start a run of a submitted DAG now."""
    params = common.parse_params(param)
    remote = common.remote()
    if remote:
        source: RunStore | Remote = remote
        run_id = remote.trigger(dag, params, priority.value if priority else None)
    else:
        engine = common.engine()
        source = engine.store
        run_id = engine.create_run(dag, params, trigger=Trigger.MANUAL, priority=priority)
    if not wait:
        if output == common.Output.json:
            views.print_json({"run_id": run_id})
        else:
            views.out.print(run_id, highlight=False)
        return
    views.err.print(f"run {run_id} created; waiting for it to end", highlight=False)
    from scheduler.cli import watch

    status = watch.follow(source, run_id)
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
    remote = common.remote()
    if remote:
        records, problem = remote.runs(dag, limit)
    else:
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
        steps = {r["run_id"]: {s["name"]: s["state"] for s in (remote.status(r["run_id"])["steps"] if remote else
                                                              store.step_records(r["run_id"]))}
                 for r in records}
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
    from scheduler.cli import watch
    from scheduler.remote import Remote

    source = common.remote() or common.store()
    if follow:
        finish(watch.follow(source, run_id), output)
        return
    data = source.status(run_id) if isinstance(source, Remote) else views.status_object(source, run_id)
    if output == common.Output.json:
        views.print_json(data)
    else:
        views.out.print(views.steps_table(data))


def logs(
    run_id: str = typer.Argument(..., help="The run's id."),
    step: str = typer.Argument(..., help="The step's name."),
    attempt: int | None = typer.Option(None, "--attempt", "-a", min=1, help="Which attempt (default: the last)."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing what the attempt writes until it "
                                "ends; then exit 0 only if it succeeded."),
) -> None:
    """Print a step attempt's output (stdout and stderr, as the container wrote them)."""
    from scheduler.runview import attempt_state, log_attempt

    remote = common.remote()
    if remote:
        _remote_logs(remote, run_id, step, attempt, follow)
        return
    store = common.store()
    if not follow:
        number = log_attempt(store, run_id, step, attempt)
        sys.stdout.buffer.write(store.read_log(run_id, step, number))
        sys.stdout.flush()
        return
    number = _first_attempt(store, run_id, step, attempt)
    offset = 0
    while True:
        ended = store.attempt_ended(run_id, step, number)  # before reading: the last bytes come before the end
        chunk = store.read_log(run_id, step, number, offset)
        if chunk:
            offset += len(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        if ended:
            break
        time.sleep(FOLLOW_POLL)
    if attempt_state(store, run_id, step, number) != "success":
        raise typer.Exit(1)


FOLLOW_POLL = 0.2


def _remote_logs(remote: Remote, run_id: str, step: str, attempt: int | None, follow: bool) -> None:
    """``ctl logs [-f]`` through the server: the same bytes, the same wait and exit code."""
    if not follow:
        sys.stdout.buffer.write(remote.log(run_id, step, attempt))
        sys.stdout.flush()
        return
    while True:  # as _first_attempt: wait for the step's first attempt unless there will be none
        try:
            number = remote.log_attempt(run_id, step, attempt)
            break
        except NotFoundError:
            steps = {s["name"]: s for s in remote.status(run_id)["steps"]}
            if step not in steps or attempt is not None or steps[step]["state"] in TERMINAL_STEP_STATES:
                raise
        time.sleep(remote.poll_seconds)
    for chunk in remote.follow_log(run_id, step, number):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    steps = {s["name"]: s for s in remote.status(run_id)["steps"]}
    if next((a["state"] for a in steps[step]["attempts"] if a["number"] == number), None) != "success":
        raise typer.Exit(1)


def _first_attempt(store: RunStore, run_id: str, step: str, attempt: int | None) -> int:
    """The attempt ``logs -f`` follows: the one asked for, else the step's last, waiting for the first
    one when the step has not been queued yet."""
    from scheduler.runview import log_attempt

    while True:
        try:
            return log_attempt(store, run_id, step, attempt)
        except NotFoundError:
            steps = {s["name"]: s for s in store.step_records(run_id)}
            if step not in steps or attempt is not None or steps[step]["state"] in TERMINAL_STEP_STATES:
                raise
        time.sleep(FOLLOW_POLL)


def cancel(
    run_id: str = typer.Argument(..., help="The run's id."),
    step: str | None = typer.Option(None, "--step", "-s", help="Cancel only this step."),
) -> None:
    """Cancel a run (or one step): waiting steps are cancelled, running containers are stopped.

    Exit 0 when this call cancelled something; 1 when the run (or step) had already ended, however it
    ended (success, failed or cancelled)."""
    from scheduler.results import StepCancelStatus

    remote = common.remote()
    if remote:
        result = remote.cancel(run_id, step)
    elif step is not None:
        done = common.engine().cancel_step(run_id, step)
        result = {"run_id": run_id, "step": step, "state": done.status.value,
                  "ended": done.status is StepCancelStatus.DONE}
    else:
        ran = common.engine().cancel(run_id)
        result = {"run_id": run_id, "state": ran.state, "stopping": ran.running, "ended": ran.already_ended}
    if step is not None:
        if result["ended"]:
            views.err.print(f"step {step} of run {run_id} had already ended")
            raise typer.Exit(1)
        views.out.print(f"run {run_id} step {step}: {result['state']}")
        return
    if result["ended"]:
        views.err.print(f"run {run_id} had already ended: {result['state']}", highlight=False)
        raise typer.Exit(1)
    note = f"; stopping {result['stopping']} running step(s)" if result["stopping"] else ""
    views.out.print(f"run {run_id}: {result['state']}{note}", highlight=False)
