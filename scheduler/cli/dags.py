"""``ctl validate`` and ``ctl submit``: DAG files in, problems or versions out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from scheduler.cli import common, views
from scheduler.errors import SpecError
from scheduler.service import submit_file
from scheduler.spec import load_file


def validate(
    files: list[Path] = typer.Argument(..., help="DAG files to check.", metavar="FILE..."),
    output: common.Output = common.OutputOption,
) -> None:
    """Check DAG files (YAML, schema, dependencies, templates) and report every problem at once."""
    problems: list[str] = []
    results = []
    for file in files:
        try:
            spec, _ = load_file(file)
            results.append({"file": str(file), "dag": spec.name, "steps": len(spec.steps), "problems": []})
        except SpecError as exc:
            problems += [str(p) for p in exc.problems]
            results.append({"file": str(file), "problems": [vars(p) for p in exc.problems]})
    if output == common.Output.json:
        views.print_json(results)
    else:
        for line in problems:
            views.err.print(line, markup=False, highlight=False)
        for result in results:
            if not result["problems"]:
                views.out.print(f"{result['file']}: ok ({result['dag']}, {result['steps']} steps)",
                                markup=False, highlight=False)
    if problems:
        raise typer.Exit(1)


def submit(
    files: list[Path] = typer.Argument(..., help="DAG files to register or update.", metavar="FILE..."),
    output: common.Output = common.OutputOption,
) -> None:
    """Register DAG files in Redis. Unchanged content is a no-op; changed content is a new version."""
    store = common.store()
    results: list[dict[str, Any]] = []
    for file in files:
        done = submit_file(store, file)
        results.append({"dag": done.spec.name, "version": done.version, "created": done.created,
                        "sha256": done.sha256, "file": str(file)})
    if output == common.Output.json:
        views.print_json(results)
        return
    for r in results:
        what = "new version" if r["created"] else "unchanged, version"
        views.out.print(f"{r['dag']}: {what} {r['version']} (sha256 {r['sha256'][:12]})", highlight=False)
