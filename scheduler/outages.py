"""Outage windows: times when runs must not start (maintenance, freezes, holidays of a team).

An :class:`Outage` is either one-off (``start``/``end`` local times) or recurring (a cron
for each window's start and a ``duration``), each in its own timezone: a London
maintenance window guards a New York schedule without anyone converting times by hand.
Windows are half-open, ``[start, end)``: a run due exactly at the end is not inside.

Recurring windows start at the cron's wall-clock times read by the scheduler's DST rule
(:func:`scheduler.calendars.localize`) and last ``duration`` of elapsed time. Windows are
returned in UTC: aware datetimes sharing one ``ZoneInfo`` compare by wall clock, ignoring
``fold``, which is wrong inside a fall-back overlap; UTC values always compare right.

:class:`OutageSet` answers "is this instant inside an outage, and when is it over?". The
end is *chained*: if a window ends inside (or exactly at the start of) another, deferring to
the first end would only land in the second, so the end keeps moving until it is free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from scheduler.calendars import (
    CalendarError,
    check_cron,
    cron_times_before,
    is_repeat,
    localize,
    utc,
    wall_clock,
    zone,
)
from scheduler.durations import DurationError, parse_duration
from scheduler.errors import InputError

Window = tuple[datetime, datetime]
MAX_CHAIN = 10_000


class OutageError(InputError):
    """An outage that cannot be built, or windows that never end; meant for people."""


@dataclass(frozen=True)
class Outage:
    """One named outage: a one-off window, or a window recurring at each cron time."""

    name: str
    tz: ZoneInfo
    start: datetime | None = None  # naive local wall time (one-off)
    end: datetime | None = None
    cron: str | None = None  # recurring
    duration: timedelta | None = None

    def __post_init__(self) -> None:
        one_off = self.start is not None and self.end is not None
        recurring = self.cron is not None and self.duration is not None
        if one_off == recurring:
            raise OutageError(f"outage {self.name!r} needs either start and end, or cron and duration")
        if one_off and self.window() is None:
            raise OutageError(f"outage {self.name!r} ends ({self.end}) before it starts ({self.start})")
        if recurring and self.duration is not None and self.duration <= timedelta(0):
            raise OutageError(f"outage {self.name!r} has a duration of zero")

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, object]) -> Outage:
        """Build from ``{cron, duration, timezone}`` or ``{start, end, timezone}`` (timezone default UTC)."""
        if not isinstance(spec, Mapping):
            raise OutageError(f"outage {name!r} must be a mapping, not {type(spec).__name__}")
        unknown = set(spec) - {"cron", "duration", "start", "end", "timezone", "description"}
        if unknown:
            raise OutageError(f"outage {name!r}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        try:
            tz = zone(str(spec.get("timezone", "UTC")))
            if "cron" in spec or "duration" in spec:
                if "start" in spec or "end" in spec:
                    raise OutageError(f"outage {name!r}: give start/end or cron/duration, not both")
                duration = parse_duration(spec.get("duration", ""))  # type: ignore[arg-type]
                return cls(name, tz, cron=check_cron(spec.get("cron")), duration=duration)
            return cls(
                name,
                tz,
                start=_local_time(spec.get("start"), name, "start"),
                end=_local_time(spec.get("end"), name, "end"),
            )
        except (CalendarError, DurationError) as exc:
            raise OutageError(f"outage {name!r}: {exc}") from None

    def window(self) -> Window | None:
        """The one-off window as aware datetimes, ``None`` if it is empty."""
        if self.start is None or self.end is None:
            return None
        start, end = utc(localize(self.start, self.tz)), utc(localize(self.end, self.tz))
        return (start, end) if start < end else None

    def window_containing(self, t: datetime) -> Window | None:
        """The window ``[start, end)`` (UTC) containing the aware instant ``t`` (latest start if several)."""
        t = utc(t)
        if self.cron is None or self.duration is None:
            window = self.window()
            return window if window and window[0] <= t < window[1] else None
        local = t.astimezone(self.tz)
        # Every wall time up to ``begin`` reads as an instant <= t: in the second pass of a
        # fall-back overlap, walls up to the end of the overlap read as the (earlier) first pass.
        begin = wall_clock(t, self.tz)
        if is_repeat(local):
            first, second = local.replace(fold=0).utcoffset(), local.utcoffset()
            assert first is not None and second is not None  # an aware local time
            begin += first - second
        begin = begin.replace(microsecond=0) + timedelta(seconds=1)
        for wall in cron_times_before(self.cron, begin):
            start = utc(localize(wall, self.tz))
            if start > t:
                continue
            end = start + self.duration
            return (start, end) if t < end else None
        return None


@dataclass(frozen=True)
class OutageSet:
    """Several named outages, asked together."""

    outages: tuple[Outage, ...] = ()

    @classmethod
    def of(cls, outages: Iterable[Outage]) -> OutageSet:
        return cls(tuple(outages))

    def __bool__(self) -> bool:
        return bool(self.outages)

    def containing(self, t: datetime) -> list[tuple[str, datetime, datetime]]:
        """Every (name, start, end) window (UTC) holding ``t``, in declaration order."""
        found = []
        for outage in self.outages:
            window = outage.window_containing(t)
            if window is not None:
                found.append((outage.name, *window))
        return found

    def find(self, t: datetime) -> tuple[str, datetime, datetime] | None:
        """``(name, start, end)`` of the outage holding ``t``, with ``end`` chained until free.

        ``name`` and ``start`` belong to the first declared outage holding ``t``; ``end`` is
        the first instant at or after ``t`` that no window holds.
        """
        hits = self.containing(t)
        if not hits:
            return None
        name, start, _ = hits[0]
        end = max(e for _, _, e in hits)
        for _ in range(MAX_CHAIN):
            more = self.containing(end)
            if not more:
                return name, start, end
            end = max(e for _, _, e in more)
        raise OutageError(f"outage windows from {t.isoformat()} chain without end (check durations)")

    def block_start(self, t: datetime) -> datetime:
        """Where the unbroken stretch of outages holding ``t`` began (``t`` itself if none)."""
        start = point = t
        for _ in range(MAX_CHAIN):
            hits = self.containing(point)
            if not hits:
                return start
            start = min(s for _, s, _ in hits)
            point = start - timedelta(microseconds=1)
        raise OutageError(f"outage windows before {t.isoformat()} chain without start (check durations)")


def _local_time(value: object, name: str, what: str) -> datetime:
    if value is None:
        raise OutageError(f"outage {name!r} needs either start and end, or cron and duration ({what} is missing)")
    if isinstance(value, date) and not isinstance(value, datetime):
        return datetime.combine(value, time())
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise OutageError(f"outage {name!r}: {what} is a local time; put the zone in 'timezone'")
        return value
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise OutageError(f"outage {name!r}: {what} {value!r} is not a local time like 2026-12-24T18:00") from None
    if parsed.tzinfo is not None:
        raise OutageError(f"outage {name!r}: {what} is a local time; put the zone in 'timezone'")
    return parsed
