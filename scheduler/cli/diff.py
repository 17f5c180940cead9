"""``ctl diff RUN_A RUN_B``: what changed between two runs (see scheduler/rundiff.py)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

from scheduler.cli import common, views

if TYPE_CHECKING:
    from rich.text import Text


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _cell(value: Any, differs: bool) -> Text:
    from rich.text import Text

    return Text(_shown(value), style="bold yellow" if differs else "")


def diff(
    run_a: str = typer.Argument(..., help="The run that worked (say)."),
    run_b: str = typer.Argument(..., help="The run to compare with it."),
    output: common.Output = common.OutputOption,
) -> None:
    """Compare two runs: DAG version and sha256, git commit, params, each step's image, exit code, duration."""
    from rich.table import Table

    from scheduler.rundiff import diff_runs
    from scheduler.runview import status_object

    store = common.store()
    data = diff_runs(status_object(store, run_a), status_object(store, run_b))
    if output == common.Output.json:
        views.print_json(data)
        return
    table = Table(title=f"{run_a} vs {run_b}: {data['differences']} difference(s)", title_justify="left")
    for column in ("", run_a, run_b):
        table.add_column(column)
    for row in data["run"]:
        table.add_row(row["field"], _cell(row["a"], row["differs"]), _cell(row["b"], row["differs"]))
    for row in data["params"]:
        table.add_row(f"params.{row['name']}", _cell(row["a"], row["differs"]), _cell(row["b"], row["differs"]))
    views.out.print(table)
    steps = Table(title="steps (last attempt)", title_justify="left")
    for column in ("step", "field", run_a, run_b):
        steps.add_column(column)
    for step in data["steps"]:
        for field in ("state", "exit_code", "image_digest", "image_id", "duration_seconds"):
            left = (step["a"] or {}).get(field)
            right = (step["b"] or {}).get(field)
            differs = field in step["differs"]
            steps.add_row(step["name"] if field == "state" else "", field, _cell(left, differs), _cell(right, differs))
    views.out.print(steps)
