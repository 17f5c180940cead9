"""The import budget of ``ctl``: what a command does not use, it does not import (speed is measured by
bench/cli_start.py; this guards the cause, the modules loaded)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT

HEAVY = {"docker", "kubernetes", "rq", "fastapi", "starlette", "uvicorn", "prometheus_client", "redis", "holidays",
         "jsonschema", "rich", "croniter"}


def imported(*args: str) -> set[str]:
    """Top-level packages ``ctl ARGS`` imports, from ``python -X importtime``."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "scheduler.cli.main", *args],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
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
