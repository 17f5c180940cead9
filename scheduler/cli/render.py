"""``ctl render FILE``: what each step of a run would get (image, argv, env, mounts, limits), without
Redis or Docker. Secrets show as references, never values."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from scheduler.cli import common, views
from scheduler.errors import Problem


def render(
    file: Path = typer.Argument(..., help="The DAG file to render."),
    param: list[str] = typer.Option(None, "--param", "-p", help="KEY=VALUE, repeatable."),
    logical_date: datetime | None = typer.Option(None, "--logical-date",
                                                 help="The run's logical date (UTC unless an offset is given); "
                                                      "default now."),
    output: common.Output = common.OutputOption,
) -> None:
    """Show each step of a run as the worker would run it: rendered image, argv, env, mounts, limits."""
    from scheduler.preview import render as render_run
    from scheduler.spec import load_file

    warnings: list[Problem] = []
    spec, _ = load_file(file, warnings=warnings, offline=True)
    for warning in warnings:
        views.err.print(str(warning), markup=False, highlight=False)
    now = datetime.now(UTC)
    when = (logical_date if logical_date.tzinfo else logical_date.replace(tzinfo=UTC)) if logical_date else None
    data = render_run(spec, common.parse_params(param), now=now, logical_date=when)
    if output == common.Output.json:
        views.print_json(data)
        return
    views.out.print(f"{data['dag']}  run {data['run_id']}  logical date {data['logical_date']}", markup=False,
                    highlight=False)
    if data["data_interval_start"]:
        views.out.print(f"data interval {data['data_interval_start']} .. {data['data_interval_end']}",
                        markup=False, highlight=False)
    for step in data["steps"]:
        views.out.print("", markup=False)
        for line in _step_lines(step):
            views.out.print(line, markup=False, highlight=False)


def _step_lines(step: dict[str, Any]) -> list[str]:
    after = f"  (after {', '.join(step['depends_on'])})" if step["depends_on"] else ""
    lines = [f"{step['step']}{after}", f"  image:   {step['image']}", f"  argv:    {shlex.join(step['argv'])}"]
    for key, value in step["env"].items():
        source = "" if isinstance(value, str) else ", ".join(f"{k} {v}" for k, v in value.items())
        shown = value if isinstance(value, str) else f"<secret from {source}>"
        lines.append(f"  env:     {key}={shown}")
    if step["working_dir"]:
        lines.append(f"  workdir: {step['working_dir']}")
    for mount in step["mounts"]:
        lines.append(f"  mount:   {mount['source']} -> {mount['target']} ({'ro' if mount['read_only'] else 'rw'})")
    limits = step["limits"]
    parts = [f"cpus {limits['cpus']:g}" if limits["cpus"] else "",
             f"memory {_size(limits['memory'])}" if limits["memory"] else "",
             f"timeout {limits['timeout']:g}s" if limits["timeout"] else ""]
    lines.append(f"  limits:  {', '.join(p for p in parts if p) or 'none (the worker defaults apply)'}")
    return lines


def _size(size: int) -> str:
    for unit, scale in (("g", 2**30), ("m", 2**20), ("k", 2**10)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return f"{size} bytes"
