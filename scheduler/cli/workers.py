"""``ctl worker``: take step attempts from the queues and run them as containers; ``ctl workers``: who
does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

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
    changes: dict[str, Any] = {}
    if allow_mount:
        changes["allowed_mounts"] = tuple(str(p) for p in allow_mount)
    if default_cpus:
        changes["default_cpus"] = default_cpus
    if default_memory:
        changes["default_memory"] = parse_size(default_memory, "--default-memory")
    current = replace(common.settings(), **changes)
    if runtime_kind() == "docker":
        check_engine()  # one clear line, before anything starts, when no engine answers at DOCKER_HOST
    logs.setup(log_level.value, log_format.value)
    store = common.store(current)  # fail early and clearly when Redis is unreachable
    observe.start_metrics(store, current, metrics_port)
    work(current, chosen, burst=burst, name=name, log_level=log_level.value, concurrency=concurrency)


def workers(output: common.Output = common.OutputOption) -> None:
    """List the workers: host, pid, name, queues, state, the attempt each runs, last heartbeat."""
    from rich.table import Table

    from scheduler.cli import views
    from scheduler.workerview import workers as worker_rows

    current = common.settings()
    rows = worker_rows(common.store(current), current.connect(decode=False))
    if output == common.Output.json:
        views.print_json(rows)
        return
    table = Table(expand=False)
    for column in ("name", "host", "pid", "queues", "state", "current attempt", "last heartbeat"):
        table.add_column(column)
    for row in rows:
        doing = row["current"]
        table.add_row(row["name"], row["host"], str(row["pid"] or ""), ",".join(row["queues"]),
                      views.styled(row["state"]),
                      f"{doing['run_id']} {doing['step']} #{doing['attempt']}" if doing else "",
                      (row["last_heartbeat"] or "")[:19])
    views.out.print(table)
    if not rows:
        views.err.print("no workers (start one with `ctl worker`)")
