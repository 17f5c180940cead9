"""``ctl worker``: take step attempts from the queues and run them as containers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from scheduler.cli import common, observe
from scheduler.model import QUEUES
from scheduler.settings import parse_size, runtime_kind


def worker(
    queues: str = typer.Option(",".join(QUEUES), "--queues", "-q", help="Queues to take work from, first first."),
    burst: bool = typer.Option(False, "--burst", help="Exit once the queues are empty."),
    name: str | None = typer.Option(None, "--name", help="Worker name (default: host-pid)."),
    log_level: observe.LogLevel = observe.LogLevelOption,
    allow_mount: list[Path] = typer.Option(None, "--allow-mount", help="A host path steps may mount (repeatable)."),
    default_cpus: float | None = typer.Option(None, "--default-cpus", min=0, help="CPU limit for steps that set none."),
    default_memory: str | None = typer.Option(None, "--default-memory", help="Memory limit for steps that set "
                                              "none, e.g. 1g."),
    log_format: observe.LogFormat = observe.LogFormatOption,
    metrics_port: int | None = observe.MetricsPortOption,
    concurrency: int = typer.Option(1, "--concurrency", "-c", envvar="CONVEYOR_WORKER_CONCURRENCY", min=1, max=256,
                                    help="Attempts this process runs at once (one slot, a thread, each)."),
) -> None:
    """Run an RQ worker that executes step attempts in Docker containers."""
    from runner.containers import check_engine  # the CLI is where scheduler and runner meet
    from runner.worker import work
    from scheduler import logs

    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in chosen if q not in QUEUES]
    if unknown or not chosen:
        raise typer.BadParameter(f"unknown queue(s) {', '.join(unknown) or '(none)'}; use {', '.join(QUEUES)}",
                                 param_hint="--queues")
    current = replace(
        common.settings(),
        **({"allowed_mounts": tuple(str(p) for p in allow_mount)} if allow_mount else {}),
        **({"default_cpus": default_cpus} if default_cpus else {}),
        **({"default_memory": parse_size(default_memory, "--default-memory")} if default_memory else {}),
    )
    if runtime_kind() == "docker":
        check_engine()  # one clear line, before anything starts, when no engine answers at DOCKER_HOST
    logs.setup(log_level.value, log_format.value)
    store = common.store(current)  # fail early and clearly when Redis is unreachable
    observe.start_metrics(store, current, metrics_port)
    work(current, chosen, burst=burst, name=name, log_level=log_level.value, concurrency=concurrency)
