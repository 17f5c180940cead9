"""``ctl run FILE``: one run, start to end, on this machine, with nothing left behind.

Uses REDIS_URL when set, else a private redis-server on a unix socket. Workers are forked from
this process (no second interpreter start-up), die with it, and are stopped when the run ends.
Ctrl-C cancels the run: running containers are stopped and the run ends as cancelled.

Settings and the Docker engine are checked before anything is started, so that a bad setting or an
engine that does not answer is one line and nothing to clean up. If every worker exits before the run
ends (whatever the reason), the run is cancelled and the command fails instead of waiting forever.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from scheduler.cli import common, runs, views
from scheduler.errors import ConveyorError, UnavailableError
from scheduler.model import Priority, Trigger
from scheduler.settings import Settings, runtime_kind

if TYPE_CHECKING:
    import multiprocessing.process

CANCEL_GRACE = 30.0


def run(
    file: Path = typer.Argument(..., help="The DAG file to run."),
    param: list[str] = typer.Option(None, "--param", "-p", help="KEY=VALUE, repeatable."),
    workers: int = typer.Option(2, "--workers", "-w", min=1, max=64, help="Worker processes to start."),
    priority: Priority | None = typer.Option(None, help="Queue for the run's steps (default: high)."),
    only: str | None = typer.Option(None, "--only", metavar="STEP[,STEP]",
                                    help="Run just these steps: everything upstream of them counts as succeeded "
                                         "(shown as success, never run), every other step is skipped."),
    output: common.Output = common.OutputOption,
) -> None:
    """Run a DAG file once, locally, in real containers; exit 0 only if the run succeeds."""
    from scheduler.cli import watch
    from scheduler.dispatch import DelayedMover
    from scheduler.embedded import embedded_redis
    from scheduler.plan import assume
    from scheduler.service import submit_file
    from scheduler.spec import load_file, resolve_params

    spec, _ = load_file(file)
    resolve_params(spec, common.parse_params(param))  # bad params fail before anything starts
    chosen = [name.strip() for name in (only or "").split(",") if name.strip()]
    assumed = assume(spec, chosen) if chosen else {}  # so do unknown steps
    configured = Settings.from_env()  # so do bad settings (REDIS_URL when it is set, CONVEYOR_*)...
    if runtime_kind() == "docker":
        from runner.containers import check_engine  # the CLI is where scheduler and runner meet

        check_engine()  # ...and an engine that does not answer: before any redis-server or run exists
    with ExitStack() as stack:
        current = configured
        if not configured.redis_url:  # a private Redis, and a private key: plans are signed and verified even here
            current = replace(configured, redis_url=stack.enter_context(embedded_redis()),
                              signing_key=secrets.token_hex(32).encode())
        engine = common.engine(current)
        store = engine.store
        submitted = submit_file(store, file)
        forked = WorkerWatch(stack.enter_context(worker_processes(current, workers)))
        mover = DelayedMover(engine.dispatcher)
        run_id = engine.create_run(submitted.spec.name, common.parse_params(param), trigger=Trigger.MANUAL,
                                   priority=priority, version=submitted.version, now=datetime.now(UTC),
                                   only=chosen)
        views.err.print(f"run {run_id} ({workers} workers, Redis {current.safe_url})", highlight=False)
        if chosen:
            upstream = [name for name, state in assumed.items() if state == "success"]
            views.err.print(f"only {', '.join(chosen)}; treated as succeeded: {', '.join(upstream) or 'nothing'}",
                            markup=False, highlight=False)

        def tick() -> None:
            mover.tick()
            forked.check()

        try:
            with _sigterm_as_interrupt():
                status = watch.follow(store, run_id, tick=tick)
        except WorkersGone as exc:
            store.cancel_run(run_id)  # nobody is left to run it, nor its handlers
            _remove_containers(run_id)
            raise WorkersGone(f"{exc}; run {run_id} was cancelled") from None
        except KeyboardInterrupt:
            views.err.print(f"interrupted: cancelling run {run_id}", highlight=False)
            engine.cancel(run_id)
            status = watch.follow(store, run_id, live=False, timeout=CANCEL_GRACE, tick=mover.tick)
            _remove_containers(run_id)
            runs.finish(status, output) if status["state"] != "cancelled" else None
            raise typer.Exit(130) from None
    runs.finish(status, output)


@contextmanager
def _sigterm_as_interrupt():
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def worker_processes(settings: Settings, count: int):
    """Fork ``count`` RQ workers; stop them (and anything they left) on the way out."""
    import multiprocessing

    import runner.worker  # noqa: F401 - imported once here, shared by every forked worker

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_worker_main, args=(settings, i), daemon=False, name=f"worker-{i}")
                 for i in range(count)]
    for process in processes:
        process.start()
    try:
        yield processes
    finally:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in processes:
            process.join(timeout=15)
            if process.is_alive():
                process.kill()
                process.join()


def _worker_main(settings: Settings, index: int) -> None:
    # Own process group: Ctrl-C reaches only the parent, which cancels the run and then stops us.
    os.setpgrp()
    from scheduler.embedded import die_with_parent

    die_with_parent()
    from runner.worker import work

    try:
        work(settings, name=f"local-{os.getppid()}-{index}-{os.getpid()}", log_level="WARNING")
    except ConveyorError as exc:  # the engine went away, say: one line, and the parent notices the exit
        print(f"worker-{index}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)


class WorkersGone(UnavailableError):
    """Every forked worker has exited while the run was not over."""


@dataclass
class WorkerWatch:
    """Watches the forked workers while the run is followed: says once which one exited and how, and
    raises :class:`WorkersGone` when none is left, so that ``ctl run`` never waits for nobody."""

    processes: Sequence[multiprocessing.process.BaseProcess]
    reported: set[int] = field(default_factory=set)

    def check(self) -> None:
        alive = 0
        for process in self.processes:
            if process.is_alive():
                alive += 1
            elif process.pid not in self.reported and process.pid is not None:
                self.reported.add(process.pid)
                views.err.print(f"{process.name} exited (exit code {process.exitcode})", highlight=False)
        if not alive:
            codes = ", ".join(str(p.exitcode) for p in self.processes)
            raise WorkersGone(f"all {len(self.processes)} workers exited before the run ended (exit codes {codes})")


def _remove_containers(run_id: str) -> None:
    """Safety net after a cancel: no container of this run may outlive ``ctl run``."""
    try:
        import docker

        client = docker.from_env()
        for container in client.containers.list(all=True, filters={"label": f"dev.conveyor.run={run_id}"}):
            container.remove(force=True)
    except Exception:
        pass


