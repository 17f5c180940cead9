"""Business-day calendars and the civil-time rules every schedule shares.

A :class:`Calendar` says which local dates are business days: a set of working weekdays,
minus the holidays of some built-in sources (the ``holidays`` package's countries and
financial markets), minus extra holidays, plus extra business days (a Saturday trading
session, say). Holiday lookups are cached per (source, year): a schedule asks about the
same few hundred dates again and again, and building a year of holidays costs far more
than a dictionary lookup.

This module also holds the two civil-time helpers shared by schedules and outages
(:func:`localize`, :func:`cron_times`): both iterate cron expressions on naive wall-clock
times and must map those to instants by the same DST rule, or an outage window and the
fire it should cover would disagree about what ``02:30`` means.

DST rule (see :func:`localize`): a wall time in a spring-forward gap means the first valid
instant after the gap; a wall time in a fall-back overlap means its first occurrence
(``fold=0``).
"""

from __future__ import annotations

import calendar as _stdcal
import copy
import difflib
import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from scheduler.errors import InputError

if TYPE_CHECKING:
    from croniter import croniter

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MON_FRI = frozenset(range(5))

# Friendlier names for built-in sources; the holidays package already knows most ISO MIC
# codes (XNYS, XLON, ...) and ``UK``, these fill the gaps people actually type.
ALIASES = {
    "UK": "GB",
    "XNYS": "NYSE",
    "NASDAQ": "XNAS",
    "TARGET": "ECB",
    "TARGET2": "ECB",
}


class CalendarError(InputError):
    """A calendar that cannot be built; the message is meant for people."""


def _holidays() -> ModuleType:
    """The ``holidays`` package, imported on first use: it costs more to import than most commands take."""
    import holidays

    return holidays


@functools.cache
def _codes() -> tuple[frozenset[str], frozenset[str]]:
    """(financial market codes, country codes), aliases included, read from the package's registry
    without importing its 250 country and market modules (listing them with subdivisions costs 0.2 s)."""
    try:
        from holidays.registry import EntityLoader

        return frozenset(EntityLoader.get_financial_codes()), frozenset(EntityLoader.get_country_codes())
    except (ImportError, AttributeError):  # another layout of the package: the public, slower lists
        return frozenset(_holidays().list_supported_financial()), frozenset(_holidays().list_supported_countries())


def _subdivisions(country: str) -> list[str]:
    return list(getattr(_holidays(), country).subdivisions)


# --------------------------------------------------------------------------- civil time


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or an error that suggests close spellings."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise CalendarError(f"unknown timezone {name!r}{hint}") from None


def utc(t: datetime) -> datetime:
    """The aware ``t`` in UTC: the only safe form to compare or add elapsed time to."""
    return t.astimezone(UTC)


def wall_clock(t: datetime, tz: ZoneInfo) -> datetime:
    """The naive local wall-clock time of the aware instant ``t`` in ``tz``."""
    return t.astimezone(tz).replace(tzinfo=None, fold=0)


def localize(wall: datetime, tz: ZoneInfo) -> datetime:
    """The instant a naive wall-clock time stands for, by the scheduler's DST rule.

    * In a spring-forward gap (02:30 on the day New York skips 02:00-03:00), the wall time
      never happens: it means the first valid instant after the gap (03:00 EDT), so a job
      still runs that day, once, as early as it can.
    * In a fall-back overlap (01:30 happens twice), it means the first occurrence
      (``fold=0``), so a job runs once, at the earlier of the two.
    The result is an aware datetime in ``tz`` that round-trips through UTC.
    """
    first = wall.replace(tzinfo=tz, fold=0)
    if _exists(first):
        return first
    # A gap: fold=0 reads the wall time with the offset before the transition, fold=1 with
    # the offset after; the transition instant lies between the two readings.
    low = int(first.replace(fold=1).timestamp())
    high = int(first.timestamp())
    after_offset = first.replace(fold=1).utcoffset()
    while low < high:
        mid = (low + high) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == after_offset:
            high = mid
        else:
            low = mid + 1
    return datetime.fromtimestamp(low, tz)


def _exists(t: datetime) -> bool:
    """Whether the aware local time ``t`` is a wall time that actually happens."""
    back = t.astimezone(UTC).astimezone(t.tzinfo)
    return back.replace(tzinfo=None, fold=0) == t.replace(tzinfo=None, fold=0)


def is_repeat(t: datetime) -> bool:
    """Whether the aware ``t`` is the second pass of a fall-back overlap (its wall time already happened)."""
    local = t.replace(fold=0)
    return t.fold == 1 and local.utcoffset() != t.utcoffset() and _exists(local)


@functools.lru_cache(maxsize=4096)
def _parsed(expr: str) -> croniter:
    from croniter import croniter  # imported on first use, like holidays

    return croniter(expr, datetime(2000, 1, 1))


def _croniter(expr: str, start: datetime) -> croniter:
    """A croniter at ``start``: a copy of one parsed once per expression (parsing costs more than a
    step; the parsed fields are never changed by iterating, only the current time is)."""
    it = copy.copy(_parsed(expr))
    it.set_current(start, force=True)
    return it


def cron_times(expr: str, after_wall: datetime) -> Iterator[datetime]:
    """Naive wall-clock times matching ``expr`` strictly after ``after_wall``, in order.

    Five fields, or six with seconds as the last field (croniter's default). Ends quietly
    when croniter finds no further match (``0 0 30 2 *``).
    """
    from croniter import CroniterBadDateError

    it = _croniter(expr, after_wall)
    while True:
        try:
            yield it.get_next(datetime)
        except CroniterBadDateError:
            return


def cron_times_before(expr: str, before_wall: datetime) -> Iterator[datetime]:
    """Naive wall-clock times matching ``expr`` strictly before ``before_wall``, newest first."""
    from croniter import CroniterBadDateError

    it = _croniter(expr, before_wall)
    while True:
        try:
            yield it.get_prev(datetime)
        except CroniterBadDateError:
            return


def check_cron(expr: object) -> str:
    """``expr`` if it is a 5- or 6-field cron expression croniter accepts, else an error that gives
    croniter's reason and an example."""
    from scheduler.advice import cron_example, seconds_first

    if not isinstance(expr, str):
        raise CalendarError(f"{expr!r} is not a cron expression (a string of 5 fields, or 6 with seconds last); "
                            f"{cron_example('')}")
    from croniter import CroniterBadCronError, croniter

    try:
        croniter(expr)
    except (CroniterBadCronError, ValueError) as exc:
        raise CalendarError(f"{expr!r} is not a cron expression (croniter: {str(exc).rstrip('.')}); "
                            f"{seconds_first(expr) or cron_example(expr)}") from None
    if len(expr.split()) not in (5, 6):
        count = len(expr.split())
        raise CalendarError(f"{expr!r} is not a cron expression ({count} field{'s' if count > 1 else ''}; Conveyor "
                            f"reads 5, or 6 with seconds last); {cron_example(expr)}")
    return expr


def parse_date(value: object, what: str) -> date:
    """A date from YAML (already a ``date``) or ISO text, with a message naming ``what``."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise CalendarError(f"{what}: {value!r} is not a date like 2026-12-24") from None


# ------------------------------------------------------------------------------ sources


def canonical_source(name: str) -> str:
    """The canonical code of a built-in holiday source (``xnys`` -> ``NYSE``), or an error."""
    code = name.strip().upper()
    code = ALIASES.get(code, code)
    country, _, subdiv = code.partition("-")
    financial, countries = _codes()
    if code in financial:
        return code
    if country in countries and (not subdiv or subdiv in _subdivisions(country)):
        return code
    if country in countries:
        raise CalendarError(f"unknown subdivision {subdiv!r} of {country}; known: {', '.join(_subdivisions(country))}")
    raise CalendarError(f"unknown calendar {name!r}{_suggest(name)}")


def _suggest(name: str, named: Iterable[str] = ()) -> str:
    financial, countries = _codes()
    known = [*named, *ALIASES, *sorted(financial), *sorted(countries)]
    close = difflib.get_close_matches(name.upper(), [k.upper() for k in known], n=5, cutoff=0.5)
    by_upper = {k.upper(): k for k in known}
    close = list(dict.fromkeys(by_upper[c] for c in close))
    return f"; did you mean {', '.join(close)}?" if close else ""


@functools.lru_cache(maxsize=1024)
def source_holidays(source: str, year: int) -> Mapping[date, str]:
    """Holidays of one canonical source in one year, as {date: name}; cached."""
    country, _, subdiv = source.partition("-")
    if source in _codes()[0]:
        found = _holidays().financial_holidays(source, years=year)
    else:
        found = _holidays().country_holidays(country, subdiv=subdiv or None, years=year)
    return {d: name for d, name in found.items() if d.year == year}


# ----------------------------------------------------------------------------- calendar


@dataclass(frozen=True)
class Calendar:
    """Which local dates are business days, and why the others are not."""

    name: str
    weekdays: frozenset[int] = MON_FRI
    sources: tuple[str, ...] = ()
    extra_holidays: Mapping[date, str] = field(default_factory=dict, hash=False)
    extra_business_days: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if not self.weekdays:
            raise CalendarError(f"calendar {self.name!r} has no working weekdays")

    @classmethod
    def builtin(cls, name: str) -> Calendar:
        """Mon-Fri minus the holidays of the built-in source ``name`` (``NYSE``, ``US``, ...)."""
        code = canonical_source(name)
        return cls(name=code, sources=(code,))

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, object]) -> Calendar:
        """Build from the YAML mapping ``{weekdays, holidays, extra_holidays, extra_business_days}``."""
        if not isinstance(spec, Mapping):
            raise CalendarError(f"calendar {name!r} must be a mapping, not {type(spec).__name__}")
        unknown = set(spec) - {"weekdays", "holidays", "extra_holidays", "extra_business_days"}
        if unknown:
            raise CalendarError(f"calendar {name!r}: unknown keys {', '.join(sorted(map(str, unknown)))}")
        weekdays = MON_FRI
        if "weekdays" in spec:
            weekdays = frozenset(_weekday(w, name) for w in _as_list(spec["weekdays"]))
        sources = tuple(dict.fromkeys(canonical_source(str(s)) for s in _as_list(spec.get("holidays", []))))
        raw_extra = spec.get("extra_holidays", [])
        pairs = raw_extra.items() if isinstance(raw_extra, Mapping) else ((d, "") for d in _as_list(raw_extra))
        extra = {parse_date(d, f"calendar {name!r} extra_holidays"): str(label or "") for d, label in pairs}
        business = frozenset(
            parse_date(d, f"calendar {name!r} extra_business_days")
            for d in _as_list(spec.get("extra_business_days", []))
        )
        return cls(name, weekdays, sources, extra, business)

    def why_not(self, d: date) -> str | None:
        """``None`` for a business day, else the reason in people's words."""
        if d in self.extra_business_days:
            return None
        if d in self.extra_holidays:
            label = self.extra_holidays[d]
            return f"extra holiday: {label}" if label else "extra holiday"
        if d.weekday() not in self.weekdays:
            return f"weekend ({WEEKDAY_NAMES[d.weekday()]})"
        for source in self.sources:
            found = source_holidays(source, d.year).get(d)
            if found is not None:
                return f"holiday: {found} ({source})"
        return None

    def is_business_day(self, d: date) -> bool:
        return self.why_not(d) is None

    def business_days(self, year: int, month: int) -> list[date]:
        """Every business day of a month, in order."""
        last = _stdcal.monthrange(year, month)[1]
        return [d for day in range(1, last + 1) if self.is_business_day(d := date(year, month, day))]

    def nth_business_day(self, year: int, month: int, n: int) -> date | None:
        """The ``n``-th business day of a month (1 = first, -1 = last); ``None`` if it has fewer."""
        if n == 0:
            raise CalendarError("business day 0 does not exist; count from 1 (first) or -1 (last)")
        days = self.business_days(year, month)
        index = n - 1 if n > 0 else n
        return days[index] if -len(days) <= index < len(days) else None

    def following(self, d: date, limit: int = 366) -> date:
        """``d`` if it is a business day, else the next one."""
        return self._step(d, 1, limit)

    def preceding(self, d: date, limit: int = 366) -> date:
        """``d`` if it is a business day, else the previous one."""
        return self._step(d, -1, limit)

    def _step(self, d: date, step: int, limit: int) -> date:
        for k in range(limit):
            candidate = d + timedelta(days=step * k)
            if self.is_business_day(candidate):
                return candidate
        raise CalendarError(f"calendar {self.name!r} has no business day within {limit} days of {d}")


def ordinal(n: int) -> str:
    """``1`` -> ``first``, ``-1`` -> ``last``, ``2`` -> ``2nd``, ``-2`` -> ``2nd to last``."""
    if n == 1:
        return "first"
    if n == -1:
        return "last"
    k = abs(n)
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}" + (" to last" if n < 0 else "")


def resolve(spec: str | Mapping[str, object], named: Mapping[str, Calendar]) -> Calendar:
    """A calendar from a name (the DAG's own calendars first, then built-ins) or an inline mapping."""
    if isinstance(spec, Mapping):
        return Calendar.from_spec("inline", spec)
    if not isinstance(spec, str):
        raise CalendarError(f"a calendar is a name or a mapping, not {spec!r}")
    if spec in named:
        return named[spec]
    try:
        return Calendar.builtin(spec)
    except CalendarError as exc:
        if "subdivision" in str(exc):
            raise
        raise CalendarError(f"unknown calendar {spec!r}{_suggest(spec, named)}") from None


def _weekday(value: object, calendar_name: str) -> int:
    text = str(value).strip().lower()
    text = text[:3] if text in {w.lower() for w in WEEKDAY_NAMES} else text
    if text not in WEEKDAYS:
        raise CalendarError(f"calendar {calendar_name!r}: {value!r} is not a weekday (mon, tue, ..., sun)")
    return WEEKDAYS.index(text)


def _as_list(value: object) -> list[object]:
    if value is None:
        return []
    if isinstance(value, str | date) or not isinstance(value, Iterable):
        return [value]
    return list(value)
