"""What every command needs: settings, a store, params from ``--param``, the output option, and the
duration type of options that read a ``CONVEYOR_*`` variable."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import TYPE_CHECKING

import typer

from scheduler.dispatch import Dispatcher
from scheduler.durations import SETTING_FORMS, DurationError, setting_seconds
from scheduler.engine import Engine
from scheduler.settings import Settings, server_from_env
from scheduler.store import RunStore

if TYPE_CHECKING:
    from scheduler.remote import Remote

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOption = typer.Option(Output.table, "--output", "-o", help="table for people, json for scripts.")


def settings() -> Settings:
    """From the environment; a Redis on localhost when REDIS_URL is unset (daemons and remote commands)."""
    return Settings.from_env(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)


def remote() -> Remote | None:
    """``ctl server``'s API when ``CONVEYOR_SERVER`` is set: the commands that read or drive runs ask it
    instead of Redis (scheduler/remote.py), with the same output and exit codes."""
    endpoint = server_from_env()
    if endpoint is None:
        return None
    from scheduler.remote import Remote

    return Remote(endpoint)


def store(current: Settings | None = None) -> RunStore:
    return RunStore.connect(current or settings())


def dispatcher(current: Settings) -> Dispatcher:
    return Dispatcher(current.connect(decode=False), current.prefix)


def engine(current: Settings | None = None) -> Engine:
    """The engine over this Redis: every command that changes state goes through it."""
    return Engine.connect(current or settings())


def parse_params(values: list[str] | None) -> dict[str, str]:
    """``--param key=value`` pairs; the value is data, kept verbatim (never parsed as YAML or a template)."""
    params: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        params[key.strip()] = value
    return params


class Seconds:
    """The parser of an option meaning a duration (``--lease-ttl``, ``--lookahead``...), given on the
    command line or in its environment variable: ``15s``, ``1m``, ``1h30m`` or a plain number, parsed as
    settings are (:func:`scheduler.durations.setting_seconds`). The value is in seconds; a plain number
    counts ``plain_unit`` seconds (86400 for an option in days). A bad value is a usage error (exit 2)
    that click words with the option's name and its environment variable."""

    __name__ = "duration"  # click names the option's type after it

    def __init__(self, *, minimum: float = 0.0, plain_unit: float = 1.0, forms: str = SETTING_FORMS):
        self.minimum = minimum
        self.plain_unit = plain_unit
        self.forms = forms

    def __call__(self, value: str | float) -> float:
        try:
            seconds = setting_seconds(value, plain_unit=self.plain_unit, forms=self.forms)
        except DurationError as exc:
            raise typer.BadParameter(str(exc)) from None
        if seconds < self.minimum:
            raise typer.BadParameter(f"{value!r} is too short; the minimum is {self.minimum:g}s")
        return seconds
