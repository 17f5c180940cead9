"""The import budget of ``ctl``: what a command does not use, it does not import (speed is measured by
bench/cli_start.py; this guards the cause, the modules loaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

HEAVY = {"docker", "kubernetes", "rq", "fastapi", "starlette", "uvicorn", "prometheus_client", "redis", "holidays",
         "jsonschema", "rich", "croniter"}


def imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """Top-level packages ``ctl ARGS`` imports, from ``python -X importtime``."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "scheduler.cli.main", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=60,
                            env=None if env is None else {**os.environ, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".")[0])
    assert "scheduler" in names  # the parse worked
    return names


@pytest.mark.parametrize("args", [("--help",), ("validate", "examples/etl.yaml"), ("run", "--help"),
                                  ("worker", "--help"), ("server", "--help")])
def test_help_and_validate_import_nothing_heavy(args: tuple[str, ...]) -> None:
    assert imported(*args) & HEAVY == set()


def test_validate_asks_redis_only_for_what_a_schedule_needs(tmp_path: Path) -> None:
    """With REDIS_URL set, named calendars come from Redis, read when a schedule needs them: a DAG without
    a schedule is checked with neither Redis (nothing listens at this URL) nor its client imported."""
    nobody = {"REDIS_URL": "redis://127.0.0.1:1/0"}
    assert imported("validate", "examples/etl.yaml", env=nobody) & HEAVY == set()
    scheduled = tmp_path / "scheduled.yaml"
    scheduled.write_text("name: s\nschedule: {cron: '0 3 * * *'}\nsteps:\n  a: {image: i, command: [x]}\n")
    asked = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "validate", str(scheduled)],
                           capture_output=True, text=True, cwd=ROOT, timeout=60, env={**os.environ, **nobody})
    assert asked.returncode == 1 and asked.stderr.startswith("cannot reach Redis"), asked.stderr
    malformed = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "validate", "examples/etl.yaml"],
                               capture_output=True, text=True, cwd=ROOT, timeout=60,
                               env={**os.environ, "REDIS_URL": "redis://127.0.0.1:port/0"})
    assert malformed.returncode == 2 and "is not a Redis URL" in malformed.stderr  # checked all the same


def test_help_lists_every_command_with_its_summary() -> None:
    from scheduler.cli.main import app

    result = subprocess.run([sys.executable, "-m", "scheduler.cli.main", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    import typer.main

    group = typer.main.get_group(app)
    assert len(group.commands) >= 20
    for name, command in group.commands.items():
        summary = command.get_short_help_str(limit=10_000)
        assert f"{name} {summary}" in text, name
        assert not summary.endswith("...")  # click cuts a summary it must shorten with "..."
