"""What every command needs: settings, a store, params from ``--param``, the output option."""

from __future__ import annotations

import os
from enum import StrEnum

import typer

from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.settings import Settings
from scheduler.store import RunStore

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOption = typer.Option(Output.table, "--output", "-o", help="table for people, json for scripts.")


def settings() -> Settings:
    """From the environment; a Redis on localhost when REDIS_URL is unset (daemons and remote commands)."""
    return Settings.from_env(os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL)


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
