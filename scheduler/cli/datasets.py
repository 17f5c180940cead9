"""``ctl dataset``: events of datasets, which trigger the DAGs whose schedule lists them (``on:``)."""

from __future__ import annotations

import json

import typer

from scheduler.cli import common, views
from scheduler.errors import InputError

dataset_app = typer.Typer(help="Datasets: producers record events; DAGs with schedule: {on: [...]} run on them.",
                          no_args_is_help=True)


@dataset_app.command("emit")
def dataset_emit(name: str = typer.Argument(..., help="The dataset's name."),
                 payload: str = typer.Option(None, "--payload", help="A JSON value kept with the event.")) -> None:
    """Record an event of a dataset from outside Conveyor (its consumers get their run from the scheduler)."""
    value = None
    if payload is not None:
        try:
            value = json.loads(payload)
        except ValueError as exc:
            raise InputError(f"--payload is not JSON: {exc}") from None
    event = common.engine().emit_dataset(name, value, source="ctl")
    views.out.print(f"dataset {name}: event {event['seq']}")


@dataset_app.command("list")
def dataset_list_command(output: common.Output = common.OutputOption) -> None:
    """Every dataset with its producers (DAG.STEP), consumers (DAGs) and last event."""
    from scheduler.datasets import dataset_list  # the store layer: only for the command that uses it

    rows = dataset_list(common.store())
    if output == common.Output.json:
        views.print_json(rows)
        return
    for row in rows:
        last = row["last_event"]
        views.out.print(f"{row['dataset']}: producers {', '.join(row['producers']) or '-'}; consumers "
                        f"{', '.join(row['consumers']) or '-'}; last event "
                        + (f"#{last['seq']} at {last['at']}" + (f" by {last['run']}" if last.get("run") else "")
                           if last else "none"))
