"""When a DAG runs: cron times in a timezone, filtered by a business calendar and outages.

Pure: every function takes the times it needs (``after``, ``now``); nothing reads a clock.

**Cron times and DST.** Crons are walked by croniter on *naive local wall-clock* times, and
each wall time is then mapped to an instant by :func:`scheduler.calendars.localize`:

* a wall time in a spring-forward gap runs once, at the first valid instant after the gap
  (``30 2 * * *`` on 2026-03-08 in New York runs at 03:00 EDT);
* a wall time in a fall-back overlap runs once, at its first occurrence (``fold=0``);
  minutes of the repeated hour do not fire again, so hourly and minutely crons never fire
  twice for one wall time, and every wall time that exists fires.
Several wall times can map to one instant (``*/15`` in a gap): that instant fires once.
A list of crons merges their times, each instant once.

**Calendar.** With a calendar (or ``business_day``/``roll`` alone, which imply a Mon-Fri
calendar), a cron time on a non-business day is dropped (``roll: skip``, the default),
or moved to the same wall time on the following/preceding business day; a moved time that
lands on a time that fires anyway runs once. ``business_day: n`` then keeps only times on
the n-th business day of their month (1 first, -1 last). Every dropped time is reported as
:class:`Dropped` with a reason people can read (``ctl next``).

**Outages.** A fire inside an outage window is deferred (``due`` = the chained end of the
window, ``outage_policy: defer``, the default) or dropped (``skip``). Outages change when a
run is created, never which logical dates exist or their data intervals.

**Data interval** (what an Airflow user expects from ``CronTriggerTimetable(interval=...)``
and the old "a run processes the period that just ended"): the run at fire time ``T`` has
``logical_date = T`` and covers ``[T - batch, T)`` when ``batch`` is set (calendar-aware in
the DAG timezone: ``1d`` is one local day, 23 or 25 hours across DST, ``1mo`` one calendar
month), else ``[previous fire, T)``, the previous fire being the previous time that passed
the calendar (outages ignored), so consecutive intervals tile time with no gap. The data
is complete when the run starts.
"""

from __future__ import annotations

import calendar as _stdcal
import difflib
import heapq
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import Enum, StrEnum
from typing import TypeVar
from zoneinfo import ZoneInfo

from scheduler.calendars import (
    Calendar,
    CalendarError,
    check_cron,
    cron_times,
    localize,
    ordinal,
    resolve,
    utc,
    wall_clock,
    zone,
)
from scheduler.durations import DurationError, parse_duration
from scheduler.errors import InputError
from scheduler.outages import Outage, OutageError, OutageSet

MONTHS_PATTERN = r"^\d+mo$"
SPEC_KEYS = (
    "cron",
    "timezone",
    "calendar",
    "business_day",
    "roll",
    "catchup",
    "max_catchup",
    "outages",
    "outage_policy",
)
DEFAULT_MAX_CATCHUP = 50
NEXT_HORIZON = timedelta(days=5 * 366)
E = TypeVar("E", bound=Enum)
# Widening windows to find the previous fire: a minutely cron finds it in the first, a monthly one later.
_LOOKBACKS = (timedelta(minutes=2), *(timedelta(hours=8**k) for k in range(6)))  # 2 min, 1h .. ~3.7 years


class ScheduleError(InputError):
    """A schedule that cannot be built or used; the message is meant for people."""


class Roll(StrEnum):
    SKIP = "skip"
    FOLLOWING = "following"
    PRECEDING = "preceding"


class OutagePolicy(StrEnum):
    DEFER = "defer"
    SKIP = "skip"


# -------------------------------------------------------------------------------- batch


@dataclass(frozen=True)
class Batch:
    """A data-interval length: calendar months, calendar days (whole days/weeks), or elapsed time."""

    text: str
    months: int = 0
    days: int = 0
    elapsed: timedelta = timedelta(0)

    @classmethod
    def parse(cls, text: str) -> Batch:
        """``6h``, ``1d``, ``1w``, ``1mo``: whole days and weeks count as local calendar days."""
        value = str(text).strip()
        if re.match(MONTHS_PATTERN, value):
            months = int(value[:-2])
            if months == 0:
                raise ScheduleError("batch 0mo is empty; use 1mo or more")
            return cls(value, months=months)
        try:
            length = parse_duration(value)
        except DurationError as exc:
            raise ScheduleError(f"batch: {exc}, or months like 1mo") from None
        if length <= timedelta(0):
            raise ScheduleError(f"batch {value!r} is empty")
        if length % timedelta(days=1) == timedelta(0):
            return cls(value, days=length.days)
        return cls(value, elapsed=length)

    def shift(self, t: datetime, tz: ZoneInfo, k: int = 1) -> datetime:
        """``t`` moved by ``k`` batches (negative: back), in ``tz``, DST-correct."""
        if self.elapsed:
            return (utc(t) + k * self.elapsed).astimezone(tz)
        wall = wall_clock(t, tz)
        if self.months:
            wall = add_months(wall, k * self.months)
        return localize(wall + timedelta(days=k * self.days), tz)


def add_months(wall: datetime, months: int) -> datetime:
    """``wall`` plus calendar months, the day clamped to the month's end (Jan 31 + 1mo = Feb 28)."""
    index = wall.year * 12 + wall.month - 1 + months
    year, month = divmod(index, 12)
    day = min(wall.day, _stdcal.monthrange(year, month + 1)[1])
    return wall.replace(year=year, month=month + 1, day=day)


# -------------------------------------------------------------------------- fire results


@dataclass(frozen=True)
class Fire:
    """One run to create: its logical date, when to create it, and the data it covers."""

    logical_date: datetime  # aware, DAG timezone
    due: datetime  # aware, DAG timezone: logical_date, or the end of an outage under defer
    data_interval_start: datetime
    data_interval_end: datetime
    rolled_from: datetime | None = None  # the cron time before a following/preceding roll
    deferred_by: str | None = None  # the outage that moved ``due``

    @property
    def utc(self) -> datetime:
        return utc(self.logical_date)


@dataclass(frozen=True)
class Dropped:
    """A cron time that does not run, and why (``weekend (Saturday)``, a holiday, an outage)."""

    at: datetime  # aware, DAG timezone
    reason: str

    @property
    def utc(self) -> datetime:
        return utc(self.at)


@dataclass(frozen=True, order=True)
class _Item:
    """A calendar-approved fire (``reason`` None) or a drop, ordered by instant."""

    instant: datetime  # UTC
    rolled: bool
    seq: int
    reason: str | None = field(default=None, compare=False)
    rolled_from: datetime | None = field(default=None, compare=False)


# ------------------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class Schedule:
    """A parsed ``schedule:`` block; see the module docstring for the rules."""

    crons: tuple[str, ...]
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    calendar: Calendar | None = None
    business_day: int | None = None
    roll: Roll = Roll.SKIP
    catchup: bool = False
    max_catchup: int = DEFAULT_MAX_CATCHUP
    outages: OutageSet = field(default_factory=OutageSet)
    outage_policy: OutagePolicy = OutagePolicy.DEFER
    batch: Batch | None = None

    @classmethod
    def from_spec(
        cls,
        spec: Mapping[str, object],
        *,
        calendars: Mapping[str, Calendar | Mapping[str, object]] | None = None,
        outages: Mapping[str, Outage | Mapping[str, object]] | None = None,
        batch: str | None = None,
    ) -> Schedule:
        """Build from the DAG file's ``schedule`` mapping plus its ``calendars``, ``outages``, ``batch``."""
        try:
            return _from_spec(cls, spec, calendars or {}, outages or {}, batch)
        except (CalendarError, OutageError) as exc:
            raise ScheduleError(str(exc)) from None

    # ---- iteration

    def fires(
        self,
        after: datetime,
        n: int | None = None,
        until: datetime | None = None,
    ) -> Iterator[Fire | Dropped]:
        """Fires strictly after ``after`` (at most ``n``; up to ``until`` inclusive), with the drops between.

        Ordered by instant. Without ``n`` or ``until`` the iterator is endless.
        """
        after_u = _aware(after, "after")
        until_u = _aware(until, "until") if until is not None else None
        previous = self._previous_fire(after_u) if self.batch is None else None  # only intervals need it
        count = 0
        for item in self._stream(after_u):
            if until_u is not None and item.instant > until_u:
                return
            at = item.instant.astimezone(self.tz)
            if item.reason is not None:
                shown = item.rolled_from if item.rolled_from is not None else item.instant
                yield Dropped(shown.astimezone(self.tz), item.reason)
                continue
            start = self._interval_start(item.instant, previous)
            previous = item.instant
            due, deferred_by = at, None
            hit = self.outages.find(item.instant) if self.outages else None
            if hit is not None:
                name, _, end = hit
                if self.outage_policy is OutagePolicy.SKIP:
                    yield Dropped(at, f"outage: {name}")
                    continue
                due, deferred_by = end.astimezone(self.tz), name
            rolled_from = item.rolled_from.astimezone(self.tz) if item.rolled_from else None
            yield Fire(at, due, start, at, rolled_from, deferred_by)
            count += 1
            if n is not None and count >= n:
                return

    def next_fires(self, after: datetime, n: int = 5, horizon: timedelta = NEXT_HORIZON) -> list[Fire]:
        """The next ``n`` fires after ``after`` (fewer if none come within ``horizon``)."""
        until = _aware(after, "after") + horizon
        return [f for f in self.fires(after, n=n, until=until) if isinstance(f, Fire)]

    def due_between(
        self,
        last_checked: datetime,
        now: datetime,
        catchup: bool | None = None,
        max_catchup: int | None = None,
    ) -> tuple[list[Fire], int]:
        """Runs to create now: fires with ``last_checked < due <= now``, and how many were not created.

        ``catchup`` true: the oldest first, at most ``max_catchup``; the rest are counted.
        ``catchup`` false: only the latest; the older ones are counted. Both default to the
        schedule's own settings.
        """
        catchup = self.catchup if catchup is None else catchup
        limit = self.max_catchup if max_catchup is None else max_catchup
        last_u, now_u = _aware(last_checked, "last_checked"), _aware(now, "now")
        scan_from = last_u
        if self.outages and self.outage_policy is OutagePolicy.DEFER:
            # A fire deferred past last_checked sits in the outage stretch holding last_checked.
            scan_from = min(last_u, utc(self.outages.block_start(last_u)))
        scan_from -= timedelta(microseconds=1)
        due = [f for f in self.fires(scan_from, until=now_u) if isinstance(f, Fire) and last_u < utc(f.due) <= now_u]
        if catchup:
            return due[:limit], max(0, len(due) - limit)
        return due[-1:], max(0, len(due) - 1)

    # ---- internals

    def _interval_start(self, instant: datetime, previous: datetime | None) -> datetime:
        if self.batch is not None:
            return self.batch.shift(instant, self.tz, -1)
        return (previous or instant).astimezone(self.tz)

    def _previous_fire(self, after_u: datetime) -> datetime | None:
        """The last calendar-approved fire at or before ``after_u`` (searching back ~3 years)."""
        for lookback in _LOOKBACKS:
            last = None
            for item in self._stream(after_u - lookback):
                if item.instant > after_u:
                    break
                if item.reason is None:
                    last = item.instant
            if last is not None:
                return last
        return None

    def _stream(self, after_u: datetime) -> Iterator[_Item]:
        """Calendar-approved fires and calendar drops strictly after ``after_u``, by instant.

        Lazy: an item is released as soon as no later cron time can produce an earlier one.
        A drop caused by a roll landing on a time that runs anyway comes where it lands.
        """
        heap: list[_Item] = []
        seq = 0
        last_fire: datetime | None = None
        judged: tuple[date, tuple[date, str | None]] | None = None
        walls = self._walls(after_u)
        while True:
            wall = next(walls, None)
            if wall is not None:
                day = wall.date()
                if judged is None or judged[0] != day:
                    judged = (day, self._judge_day(day))
                seq += 1
                item = self._item(day, wall, *judged[1], seq)
                heapq.heappush(heap, item)
                bound = self._bound(day, item)
            while heap and (wall is None or heap[0] < bound):
                item = heapq.heappop(heap)
                if item.instant <= after_u:
                    continue
                if item.reason is None and last_fire is not None and item.instant <= last_fire:
                    if item.rolled_from is not None:
                        why = self._why(item.rolled_from)
                        note = f"{why}; rolled {self.roll.value} onto a time that runs anyway"
                        yield _Item(item.instant, True, item.seq, note, item.rolled_from)
                    continue
                if item.reason is None:
                    last_fire = item.instant
                yield item
            if wall is None:
                return

    def _bound(self, day: date, item: _Item) -> _Item:
        """Items ordered before this bound can no longer be preceded by items of later cron times."""
        if self.calendar is None or self.roll is Roll.SKIP:
            # Wall time -> instant is monotone: nothing later comes before this item.
            return _Item(item.instant, True, item.seq + 1)
        if self.roll is Roll.FOLLOWING:
            # Later times roll forward, never before their own instant (>= this one's).
            instant = item.rolled_from if item.rolled_from is not None else item.instant
            return _Item(instant, False, -1)
        # Later times roll back at most to the start of the business day on or before theirs.
        start = localize(datetime.combine(self.calendar.preceding(day), time()), self.tz)
        return _Item(utc(start), False, -1)

    def _why(self, instant: datetime) -> str:
        reason = self.calendar.why_not(instant.astimezone(self.tz).date()) if self.calendar else None
        return reason or "not a business day"

    def _judge_day(self, day: date) -> tuple[date, str | None]:
        """Where the cron times of ``day`` go (after a roll), and why they do not run (``None``: they do)."""
        if self.calendar is None:
            return day, None
        target, reason = day, self.calendar.why_not(day)
        if reason is not None:
            if self.roll is Roll.SKIP:
                return day, reason
            target = self.calendar.following(day) if self.roll is Roll.FOLLOWING else self.calendar.preceding(day)
        if self.business_day is not None:
            wanted = self.calendar.nth_business_day(target.year, target.month, self.business_day)
            if target != wanted:
                why = f"not the {ordinal(self.business_day)} business day of the month"
                return day, f"{reason}; rolled {self.roll.value} to {target}, {why}" if reason else why
        return target, None

    def _item(self, day: date, wall: datetime, target: date, reason: str | None, seq: int) -> _Item:
        at = utc(localize(wall, self.tz))
        if reason is not None or target == day:
            return _Item(at, False, seq, reason)
        moved = utc(localize(datetime.combine(target, wall.time()), self.tz))
        return _Item(moved, True, seq, rolled_from=at)

    def _walls(self, after_u: datetime) -> Iterator[datetime]:
        """Cron wall times (all crons merged, each once) from which items after ``after_u`` can come."""
        start = wall_clock(after_u, self.tz)
        if self.calendar is not None and self.roll is Roll.FOLLOWING:
            # Cron times on the non-business days just before may roll forward past after_u.
            day = start.date()
            for _ in range(366):
                if self.calendar.is_business_day(day - timedelta(days=1)):
                    break
                day -= timedelta(days=1)
            start = min(start, datetime.combine(day, time()) - timedelta(seconds=1))
        previous = None
        for wall in heapq.merge(*(cron_times(expr, start) for expr in self.crons)):
            if wall != previous:
                yield wall
            previous = wall


def _aware(t: datetime | None, what: str) -> datetime:
    if t is None or t.tzinfo is None or t.utcoffset() is None:
        raise ScheduleError(f"{what} must be a timezone-aware datetime, not {t!r}")
    return utc(t)


def _from_spec(
    cls: type[Schedule],
    spec: Mapping[str, object],
    calendars: Mapping[str, Calendar | Mapping[str, object]],
    outages: Mapping[str, Outage | Mapping[str, object]],
    batch: str | None,
) -> Schedule:
    if not isinstance(spec, Mapping):
        raise ScheduleError(f"schedule must be a mapping with a 'cron' key, not {spec!r}")
    for key in spec:
        if key not in SPEC_KEYS:
            close = difflib.get_close_matches(str(key), SPEC_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ScheduleError(f"schedule: unknown key {key!r}{hint}")
    raw_crons = spec.get("cron")
    crons = [raw_crons] if isinstance(raw_crons, str) else list(raw_crons or [])  # type: ignore[call-overload]
    if not crons:
        raise ScheduleError("schedule: 'cron' is required (one expression or a list)")
    crons = [check_cron(c) for c in crons]
    tz = zone(str(spec.get("timezone", "UTC")))

    named = {name: c if isinstance(c, Calendar) else Calendar.from_spec(name, c) for name, c in calendars.items()}
    business_day = spec.get("business_day")
    if business_day is not None and (
        isinstance(business_day, bool) or not isinstance(business_day, int) or not 0 < abs(business_day) <= 31
    ):
        raise ScheduleError(f"schedule: business_day {business_day!r} must be 1..31 or -1..-31 (-1 = last)")
    roll = _enum(Roll, spec.get("roll", "skip"), "roll")
    calendar = None
    if spec.get("calendar") is not None:
        calendar = resolve(spec["calendar"], named)  # type: ignore[arg-type]
    elif business_day is not None or "roll" in spec:
        calendar = Calendar("weekdays")

    windows = []
    for name in _names(spec.get("outages", [])):
        if name not in outages:
            close = difflib.get_close_matches(name, list(outages), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; defined: {', '.join(outages) or 'none'}"
            raise ScheduleError(f"schedule: unknown outage {name!r}{hint}")
        o = outages[name]
        windows.append(o if isinstance(o, Outage) else Outage.from_spec(name, o))

    catchup = spec.get("catchup", False)
    max_catchup = spec.get("max_catchup", DEFAULT_MAX_CATCHUP)
    if not isinstance(catchup, bool):
        raise ScheduleError(f"schedule: catchup must be true or false, not {catchup!r}")
    if isinstance(max_catchup, bool) or not isinstance(max_catchup, int) or max_catchup < 0:
        raise ScheduleError(f"schedule: max_catchup must be a whole number >= 0, not {max_catchup!r}")
    return cls(
        crons=tuple(crons),
        tz=tz,
        calendar=calendar,
        business_day=business_day,
        roll=roll,
        catchup=catchup,
        max_catchup=max_catchup,
        outages=OutageSet.of(windows),
        outage_policy=_enum(OutagePolicy, spec.get("outage_policy", "defer"), "outage_policy"),
        batch=Batch.parse(batch) if batch is not None else None,
    )


def _enum(kind: type[E], value: object, key: str) -> E:
    try:
        return kind(value)
    except ValueError:
        allowed = "|".join(str(m.value) for m in kind)
        raise ScheduleError(f"schedule: {key} must be {allowed}, not {value!r}") from None


def _names(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list | tuple):
        raise ScheduleError(f"schedule: outages must be a list of outage names, not {value!r}")
    return [str(v) for v in value]
