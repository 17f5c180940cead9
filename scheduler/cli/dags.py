"""``ctl validate`` and ``ctl submit``: DAG files in, problems or versions out.

Both report every file: its errors, its warnings (``file:line:col: warning: ...``, on stderr, never
stored) and, for a good file, its result on stdout. One bad file does not stop the others; the exit
code is 1 when any file was bad.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import typer

from scheduler.cli import common, views
from scheduler.errors import Problem, SpecError


def validate(
    files: list[Path] = typer.Argument(..., help="DAG files, or folders of them, to check.", metavar="PATH..."),
    strict: bool = typer.Option(False, "--strict", help="Treat warnings as errors (exit 1 when there is any)."),
    output: common.Output = common.OutputOption,
) -> None:
    """Check DAG files (YAML, schema, dependencies, templates, schedules) and report every problem at once.

    A folder stands for every DAG file under it (*.yaml, *.yml). Named calendars are checked against Redis
    when REDIS_URL is set; otherwise a calendar that is not built in is a warning ("cannot check offline").
    A dataset that a step produces and that no DAG checked in the same call consumes is a warning."""
    from scheduler.datasetuse import unconsumed_warnings
    from scheduler.spec import check_file, file_bytes  # here: `ctl validate` starts without Redis, RQ or rich

    calendars, offline = _named_calendars()
    results = []
    loaded = []
    for file in _dag_files(files):
        warnings: list[Problem] = []
        errors: list[Problem] = []
        result: dict[str, Any] = {"file": str(file)}
        try:
            document = check_file(file, calendars, warnings=warnings, offline=offline)
            result.update(dag=document["name"], steps=len(document["steps"]))
            loaded.append((str(file), document, file_bytes(file)))
        except SpecError as exc:
            errors = list(exc.problems)
        results.append((result, errors, warnings))
    across = unconsumed_warnings(loaded)  # every good file is known now: producers meet their consumers
    for result, errors, warnings in results:
        warnings += [w for w in across if w.file == result["file"]]
        if strict:
            errors[:], warnings[:] = sorted(errors + [_as_error(w) for w in warnings]), []
        result.update(problems=[vars(p) for p in errors], warnings=[vars(w) for w in sorted(warnings)])
        if output != common.Output.json:
            for problem in sorted(errors + warnings):
                views.plain(str(problem), stderr=True)
    if output == common.Output.json:
        views.print_json([result for result, _, _ in results])
    else:
        for result, _, _ in results:
            if not result["problems"]:
                noted = f"; {len(result['warnings'])} warning(s)" if result["warnings"] else ""
                views.plain(f"{result['file']}: ok ({result['dag']}, {result['steps']} steps{noted})")
    if any(result["problems"] for result, _, _ in results):
        raise typer.Exit(1)


def _dag_files(paths: list[Path]) -> list[Path]:
    """The files as given, each folder replaced by the DAG files under it (as ``ctl scheduler --dags`` reads one)."""
    found = []
    for path in paths:
        if path.is_dir():
            from scheduler.dagsync import dag_files  # only for a folder: it imports the store layer

            found += [file for _, file in dag_files(path)]
        else:
            found.append(path)
    return found


def _named_calendars() -> tuple[Mapping[str, Any], bool]:
    """The calendars submitted with ``ctl calendar submit`` when REDIS_URL is set, else none and offline.
    The URL's form is checked now; Redis is asked (and the URL's options checked) when a file needs them."""
    if not os.environ.get("REDIS_URL"):
        return {}, True
    from scheduler.settings import check_redis_url

    if os.environ["REDIS_URL"].strip():
        check_redis_url(os.environ["REDIS_URL"].strip(), options=False)
    return _SubmittedCalendars(), False


class _SubmittedCalendars(Mapping[str, Any]):
    """The named calendars in Redis, read the first time a file's schedule needs them: most DAGs have no
    schedule, and checking those needs no Redis client (whose import alone takes a tenth of a second)."""

    def __init__(self) -> None:
        self._read: dict[str, Any] | None = None

    def _calendars(self) -> dict[str, Any]:
        if self._read is None:
            from scheduler.agenda import Agenda

            self._read = Agenda(common.store()).calendars()
        return self._read

    def __getitem__(self, name: str) -> Any:
        return self._calendars()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._calendars())

    def __len__(self) -> int:
        return len(self._calendars())


def _as_error(warning: Problem) -> Problem:
    return Problem(warning.file, warning.line, warning.col, warning.path, warning.message)


def submit(
    files: list[Path] = typer.Argument(..., help="DAG files to register or update.", metavar="FILE..."),
    output: common.Output = common.OutputOption,
) -> None:
    """Register DAG files in Redis. Unchanged content is a no-op; changed content is a new version.

    Every file is reported: good files are submitted even when others are bad (exit 1 then)."""
    from scheduler.service import submit_file

    store = common.store()
    results: list[dict[str, Any]] = []
    for file in files:
        warnings: list[Problem] = []
        try:
            done = submit_file(store, file, warnings=warnings)
        except SpecError as exc:
            results.append({"file": str(file), "problems": [vars(p) for p in exc.problems],
                            "warnings": [vars(w) for w in warnings]})
            problems = sorted([*exc.problems, *warnings])
        else:
            results.append({"dag": done.spec.name, "version": done.version, "created": done.created,
                            "sha256": done.sha256, "file": str(file), "warnings": [vars(w) for w in warnings]})
            problems = warnings
        for problem in problems:
            views.err.print(str(problem), markup=False, highlight=False)
    if output == common.Output.json:
        views.print_json(results)
    else:
        for r in results:
            if "problems" in r:
                views.err.print(f"{r['file']}: not submitted ({len(r['problems'])} problem(s))", markup=False,
                                highlight=False)
                continue
            what = "new version" if r["created"] else "unchanged, version"
            views.out.print(f"{r['dag']}: {what} {r['version']} (sha256 {r['sha256'][:12]})", markup=False,
                            highlight=False)
    if any("problems" in r for r in results):
        raise typer.Exit(1)
