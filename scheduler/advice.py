"""Advice on schedule text: valid crons and calendars that probably do not mean what their author
thinks, and examples for crons that are not crons at all.

Pure functions of the text; :mod:`scheduler.spec` places their messages at ``file:line:col`` (as
warnings, which ``ctl validate --strict`` turns into errors).
"""

from __future__ import annotations

import re

#: Calendar names that mean the holidays common to all UK nations, which few people want.
UK_WIDE = frozenset({"UK", "GB"})
_CLOCK = re.compile(r"\b(\d{1,2})(?:[:.h](\d{2}))?\s*(am|pm)?\b", re.IGNORECASE)


def quartz_cron(expr: str) -> str | None:
    """Why a six-field cron looks written seconds-first (Quartz, Spring), or None.

    Conveyor (like croniter) reads six fields as ``minute hour day month weekday second``. A
    Quartz-style ``0 0 17 * * *`` ("17:00 every day") therefore means "every second of midnight on
    the 17th": a first field ``0`` and a last field ``*`` is the pattern of that mistake.
    """
    fields = expr.split()
    if len(fields) != 6 or fields[0] != "0" or fields[-1] != "*":
        return None
    five = " ".join(fields[1:]).replace("?", "*")
    return (f"{expr!r} has 6 fields and Conveyor puts seconds LAST (minute hour day month weekday second), "
            f"so its last field '*' fires every second of each matching minute; if the first field meant "
            f"seconds (Quartz style), drop it: \"{five}\"")


def seconds_first(expr: str) -> str | None:
    """For a six-field cron croniter refused that starts with ``0``: the Quartz reading, or None."""
    fields = expr.split()
    if len(fields) != 6 or fields[0] != "0":
        return None
    five = " ".join(fields[1:]).replace("?", "*")
    return f"Conveyor puts seconds LAST, not first (Quartz style); without the seconds: \"{five}\""


def uk_calendar(name: str) -> str | None:
    """Why ``calendar: UK`` (or ``GB``) is a trap for London users, or None."""
    if name.strip().upper() not in UK_WIDE:
        return None
    return (f"calendar {name!r} holds only the holidays common to all UK nations (no Easter Monday or Late Summer "
            "Bank Holiday, which England and Wales have); use 'GB-ENG' for England's bank holidays or "
            "'XLON' for the London Stock Exchange")


def cron_example(text: str) -> str:
    """An example cron for a text that is not one: the time of day it names, if any ("5pm" -> 17:00)."""
    hour, minute = 17, 0
    for match in _CLOCK.finditer(text):
        h, m, half = int(match.group(1)), int(match.group(2) or 0), (match.group(3) or "").lower()
        if not (half or match.group(2)) or m > 59:
            continue  # a bare number is not a time of day
        if half:
            if not 1 <= h <= 12:
                continue
            h = h % 12 + (12 if half == "pm" else 0)
        if h <= 23:
            hour, minute = h, m
            break
    return f'e.g. "{minute} {hour} * * *" for every day at {hour:02d}:{minute:02d}'
