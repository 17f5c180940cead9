"""``ctl worker``: take step attempts from the queues and run them as containers."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import typer

from scheduler import logs
from scheduler.cli import common, observe
from scheduler.model import QUEUES, memory_bytes


def worker(
    queues: str = typer.Option(",".join(QUEUES), "--queues", "-q", help="Queues to take work from, first first."),
    burst: bool = typer.Option(False, "--burst", help="Exit once the queues are empty."),
    name: str | None = typer.Option(None, "--name", help="Worker name (default: host-pid)."),
    log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR."),
    allow_mount: list[Path] = typer.Option(None, "--allow-mount", help="A host path steps may mount (repeatable)."),
    default_cpus: float | None = typer.Option(None, "--default-cpus", help="CPU limit for steps that set none."),
    default_memory: str | None = typer.Option(None, "--default-memory", help="Memory limit for steps that set "
                                              "none, e.g. 1g."),
    log_format: observe.LogFormat = observe.LogFormatOption,
    metrics_port: int | None = observe.MetricsPortOption,
) -> None:
    """Run an RQ worker that executes step attempts in Docker containers."""
    from runner.worker import work  # the CLI is where scheduler and runner meet

    chosen = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in chosen if q not in QUEUES]
    if unknown or not chosen:
        raise typer.BadParameter(f"unknown queue(s) {', '.join(unknown) or '(none)'}; use {', '.join(QUEUES)}",
                                 param_hint="--queues")
    current = replace(
        common.settings(),
        **({"allowed_mounts": tuple(str(p) for p in allow_mount)} if allow_mount else {}),
        **({"default_cpus": default_cpus} if default_cpus else {}),
        **({"default_memory": memory_bytes(default_memory)} if default_memory else {}),
    )
    logs.setup(log_level, log_format.value)
    store = common.store(current)  # fail early and clearly when Redis is unreachable
    observe.start_metrics(store, current, metrics_port)
    if os.environ.get("CONVEYOR_RUNTIME", "docker").strip().lower() in {"", "docker"}:
        _check_docker()
    work(current, chosen, burst=burst, name=name, log_level=log_level.upper())


def _check_docker() -> None:
    import docker
    import docker.errors

    from scheduler.errors import UnavailableError

    try:
        docker.from_env().ping()
    except docker.errors.DockerException as exc:
        raise UnavailableError(f"cannot reach the Docker engine: {exc}. Is dockerd running? "
                               "(DOCKER_HOST selects another engine)") from None
