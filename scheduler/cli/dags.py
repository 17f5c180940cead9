"""``ctl validate`` and ``ctl submit``: DAG files in, problems or versions out."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli import common, views
from scheduler.errors import SpecError


def validate(
    files: list[Path] = typer.Argument(..., help="DAG files to check.", metavar="FILE..."),
    output: common.Output = common.OutputOption,
) -> None:
    """Check DAG files (YAML, schema, dependencies, templates) and report every problem at once."""
    from scheduler.spec import load_file

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
            views.plain(line, stderr=True)
        for result in results:
            if not result["problems"]:
                views.plain(f"{result['file']}: ok ({result['dag']}, {result['steps']} steps)")
    if problems:
        raise typer.Exit(1)


def submit(
    files: list[Path] = typer.Argument(..., help="DAG files to register or update.", metavar="FILE..."),
    output: common.Output = common.OutputOption,
) -> None:
    """Register DAG files in Redis. Unchanged content is a no-op; changed content is a new version."""
    from scheduler.service import submit_file

    store = common.store()
    results = []
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
