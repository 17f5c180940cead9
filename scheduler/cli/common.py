"""What every command needs: settings, a store, params from ``--param``, the output option, and the
duration type of options that read a ``CONVEYOR_*`` variable."""

from __future__ import annotations

import os
from enum import StrEnum
from typing import TYPE_CHECKING

import typer

from scheduler.durations import SETTING_FORMS, DurationError, setting_seconds

if TYPE_CHECKING:  # imported where used: `ctl --help` and `ctl validate` never load Redis, RQ or Docker
    from scheduler.dispatch import Dispatcher
    from scheduler.engine import Engine
    from scheduler.remote import Remote
    from scheduler.settings import Settings
    from scheduler.store import RunStore

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Output(StrEnum):
    table = "table"
    json = "json"


OutputOption = typer.Option(Output.table, "--output", "-o", help="table for people, json for scripts.")


def settings() -> Settings:
    """From the environment; a Redis on localhost when REDIS_URL is unset (daemons and remote commands)."""
    from dataclasses import replace

    from scheduler.settings import Settings

    given = os.environ.get("REDIS_URL", "").strip()
    if given:
        return Settings.from_env(given)
    # The default needs no check (which would import redis, a tenth of a second, for ctl next FILE).
    return replace(Settings.from_env("", {k: v for k, v in os.environ.items() if k != "REDIS_URL"}),
                   redis_url=DEFAULT_REDIS_URL)


def remote() -> Remote | None:
    """``ctl server``'s API when ``CONVEYOR_SERVER`` is set: the commands that read or drive runs ask it
    instead of Redis (scheduler/remote.py), with the same output and exit codes."""
    from scheduler.settings import server_from_env

    endpoint = server_from_env()
    if endpoint is None:
        return None
    from scheduler.remote import Remote

    return Remote(endpoint)


def store(current: Settings | None = None) -> RunStore:
    from scheduler.store import RunStore

    return RunStore.connect(current or settings())


def store_if_up(current: Settings | None = None) -> RunStore | None:
    """The store when its Redis answers at once (one try, no retries), else None: for commands that read a
    file and only add what Redis knows (``ctl next FILE``, ``ctl graph FILE``). A refused connection is
    then an instant answer, not a second of retries; a bad ``REDIS_URL`` is still a ConfigError."""
    current = current or settings()
    if current.redis_url == DEFAULT_REDIS_URL and not _listening("127.0.0.1", 6379):
        return None  # nothing there: known without importing redis (most of this command's start-up)
    import redis

    probe = redis.Redis.from_url(current.redis_url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        probe.ping()
    except (redis.RedisError, OSError):
        return None
    finally:
        probe.close()
    return store(current)


def _listening(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def dispatcher(current: Settings) -> Dispatcher:
    from scheduler.dispatch import Dispatcher

    return Dispatcher(current.connect(decode=False), current.prefix)


def engine(current: Settings | None = None) -> Engine:
    """The engine over this Redis: every command that changes state goes through it."""
    from scheduler.engine import Engine

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
