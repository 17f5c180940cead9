"""Commands about data passed between steps: ``ctl outputs``."""

from __future__ import annotations

import json

import typer

from scheduler.cli import common, views
from scheduler.errors import NotFoundError


def outputs(
    run_id: str = typer.Argument(..., help="The run's id."),
    step: str = typer.Argument(..., help="The step's name."),
    attempt: int | None = typer.Option(None, "--attempt", "-a", min=1,
                                       help="Which attempt (default: the latest successful one)."),
    output: common.Output = common.OutputOption,
) -> None:
    """Print the outputs a step attempt recorded (what {{ steps.STEP.outputs.NAME }} reads downstream)."""
    store = common.store()
    steps = {s["name"]: s for s in store.step_records(run_id)}
    if step not in steps:
        raise NotFoundError(f"run '{run_id}' has no step '{step}'; steps: {', '.join(steps)}")
    attempts = steps[step]["attempts"]
    if attempt is not None:
        chosen = next((a for a in attempts if a.get("number") == str(attempt)), None)
        if chosen is None:
            raise NotFoundError(f"step '{step}' of run '{run_id}' has no attempt {attempt}")
    else:
        chosen = next((a for a in reversed(attempts) if a.get("state") == "success"), None)
        if chosen is None:
            raise NotFoundError(f"step '{step}' of run '{run_id}' has no successful attempt yet")
    values = json.loads(chosen.get("outputs") or "{}")
    if output == common.Output.json:
        views.print_json(values)
        return
    from rich.table import Table

    table = Table(title=f"{run_id} {step} attempt {chosen.get('number')}", title_justify="left", expand=False)
    table.add_column("output")
    table.add_column("value")
    for name, value in values.items():
        table.add_row(name, value)
    views.out.print(table)
