"""``ctl calendar`` and ``ctl outage``: named business calendars and global outage windows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from scheduler.cli import common, views
from scheduler.errors import Problem, SpecError

if TYPE_CHECKING:
    from scheduler.agenda import Agenda


def _agenda() -> Agenda:
    """The store's agenda (imported here: only the commands that talk to Redis load it)."""
    from scheduler.agenda import Agenda

    return Agenda(common.store())

calendar_app = typer.Typer(help="Named business-day calendars, shared by every DAG.", no_args_is_help=True)
outage_app = typer.Typer(help="Global outage windows: no scheduled run is due and no step starts inside one.",
                         no_args_is_help=True)


@calendar_app.command("submit")
def calendar_submit(file: Path = typer.Argument(..., help="YAML: a mapping of calendar name to calendar.")) -> None:
    """Define or replace named calendars, e.g. ``ops: {weekdays: [mon, tue, wed, thu, fri], holidays: [US]}``."""
    from scheduler.yamlsource import YamlProblems, parse

    try:
        source = parse(file.read_bytes(), str(file), fast=False)  # small: read as always
    except OSError as exc:
        raise SpecError([Problem(str(file), 1, 1, "", f"cannot read the file: {exc.strerror or exc}")]) from None
    except YamlProblems as exc:
        raise SpecError(exc.problems) from None
    data = source.data.get("calendars", source.data) if isinstance(source.data, dict) else None
    if not isinstance(data, dict) or not data:
        raise SpecError([source.problem((), "expected a mapping of calendar name to calendar")])
    names = _agenda().put_calendars(data)
    views.out.print(f"calendars: {', '.join(names)}")


@calendar_app.command("list")
def calendar_list(output: common.Output = common.OutputOption) -> None:
    """Show the named calendars."""
    _print_named(_agenda().calendars(), output)


@outage_app.command("add")
def outage_add(
    name: str = typer.Argument(..., help="The outage's name."),
    start: str | None = typer.Option(None, help="One-off: start, local time like 2026-12-24T18:00."),
    end: str | None = typer.Option(None, help="One-off: end, local time."),
    cron: str | None = typer.Option(None, help="Recurring: when each window starts, e.g. '0 2 * * sun'."),
    duration: str | None = typer.Option(None, help="Recurring: how long each window lasts, e.g. 2h."),
    timezone: str = typer.Option("UTC", help="IANA timezone of the times above."),
) -> None:
    """Add (or replace) a global outage: one-off (--start/--end) or recurring (--cron/--duration)."""
    if (start or end) and (cron or duration):
        raise typer.BadParameter("give --start/--end or --cron/--duration, not both")
    spec: dict[str, str | None] = {"timezone": timezone}
    spec.update({"start": start, "end": end} if start or end else {"cron": cron, "duration": duration})
    _agenda().put_outage(name, {k: v for k, v in spec.items() if v is not None})
    views.out.print(f"outage {name}: added")


@outage_app.command("list")
def outage_list(output: common.Output = common.OutputOption) -> None:
    """Show the global outages."""
    _print_named(_agenda().outages(), output)


@outage_app.command("remove")
def outage_remove(name: str = typer.Argument(..., help="The outage's name.")) -> None:
    """Remove a global outage."""
    _agenda().remove_outage(name)
    views.out.print(f"outage {name}: removed")


def _print_named(specs: dict, output: common.Output) -> None:
    if output == common.Output.json:
        views.print_json(specs)
        return
    for name, spec in sorted(specs.items()):
        views.out.print(f"{name}: {spec}", markup=False)
