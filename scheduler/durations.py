"""Durations as people write them: ``30s``, ``5m``, ``2h``, ``1d``, ``1w``, ``1h30m``, ``250ms``.

One parser for every duration in the product (timeouts, backoff, batches, outages), so that
the same text means the same time everywhere. Months (``1mo``) are calendar units, not
durations: batches that need them go through :func:`parse_batch`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import overload

from scheduler.errors import InputError

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION_PATTERN = r"^(?:\d+(?:ms|s|m|h|d|w))+$"
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_WHOLE = re.compile(DURATION_PATTERN)
_PLAIN_NUMBER = re.compile(r"^(?:\d+(?:\.\d*)?|\.\d+)$")
#: How settings and options that mean a duration may be written, for messages and help texts.
SETTING_FORMS = "a duration like 15s, 1m or 1h30m, or plain seconds like 10 or 2.5"


class DurationError(InputError):
    """Raised for text that is not a duration; the message is meant for people."""


def parse_duration(text: str | int | float) -> timedelta:
    """Parse ``30s``/``5m``/``1h30m``; a bare number counts as seconds."""
    if isinstance(text, bool):
        raise DurationError(f"{text!r} is not a duration like 30s, 5m, 2h, 1d, 1w")
    if isinstance(text, int | float):
        if text < 0:
            raise DurationError(f"{text!r} is negative; a duration must be 0 or more")
        return timedelta(seconds=text)
    value = str(text).strip()
    if not _WHOLE.match(value):
        raise DurationError(f"{text!r} is not a duration like 30s, 5m, 2h, 1d, 1w")
    seconds = sum(int(n) * UNITS[unit] for n, unit in _PART.findall(value))
    return timedelta(seconds=seconds)


@overload
def seconds(text: str | int | float | None, default: float) -> float: ...
@overload
def seconds(text: str | int | float | None, default: None = None) -> float | None: ...
def seconds(text: str | int | float | None, default: float | None = None) -> float | None:
    """Seconds in a duration, or ``default`` when none is given."""
    if text is None:
        return default
    return parse_duration(text).total_seconds()


def setting_seconds(text: str | float, *, plain_unit: float = 1.0, forms: str = SETTING_FORMS) -> float:
    """Seconds from a setting a person typed (an environment variable, an option): a duration (``15s``,
    ``1m``, ``1h30m``) or a plain number (``10``, ``2.5``) of ``plain_unit`` seconds (days for
    ``--history-days``, whose ``forms`` then say so). Raises DurationError for anything else, negative
    numbers included."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
        if value < 0 or value != value or value == float("inf"):
            raise DurationError(f"{text!r} is not {forms}")
        return value * plain_unit
    written = str(text).strip()
    if _PLAIN_NUMBER.match(written):
        return float(written) * plain_unit
    if not _WHOLE.match(written):
        raise DurationError(f"{text!r} is not {forms}")
    return parse_duration(written).total_seconds()


def format_duration(value: timedelta | float) -> str:
    """The shortest exact spelling of a duration (``90`` -> ``1m30s``)."""
    total_ms = round((value.total_seconds() if isinstance(value, timedelta) else value) * 1000)
    if total_ms == 0:
        return "0s"
    parts = []
    for unit in ("w", "d", "h", "m", "s", "ms"):
        size = round(UNITS[unit] * 1000)
        count, total_ms = divmod(total_ms, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
