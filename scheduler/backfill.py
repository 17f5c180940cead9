"""Backfill plans: which data intervals to run for a past range. Pure; no store, no clock.

Two ways to cut ``[start, end)``:

* :func:`plan_batches` cuts it into fixed batches (``6h``, ``1d``, ``1w``, ``1mo``) laid from
  ``start`` in the DAG timezone. Day, week and month batches follow the local calendar, so
  a ``1d`` batch across a DST change lasts 23 or 25 hours and ``1mo`` is a calendar month.
  Each boundary is computed from ``start`` (``start + k`` batches), so a month batch that
  starts on the 31st does not drift to the 28th after February. A last batch that would
  run past ``end`` is cut at ``end``: the plan covers exactly the range asked for.
* :func:`plan_schedule_aligned` gives one fire per schedule time whose data interval lies
  inside the range, so the backfilled runs are the very runs the scheduler would have made
  (calendars applied; an outage under ``skip`` drops its run here too).

``backwards=True`` returns the same intervals newest first: recent data is usually wanted
first.
"""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from scheduler.calendars import localize, utc, zone
from scheduler.schedules import Batch, Fire, Schedule, ScheduleError

Interval = tuple[datetime, datetime]
MAX_BATCHES = 100_000


def plan_batches(
    start: datetime | date,
    end: datetime | date,
    batch: str | Batch,
    tz: ZoneInfo | str,
    *,
    backwards: bool = False,
) -> list[Interval]:
    """``[start, end)`` cut into batches, as aware ``(start, end)`` pairs in ``tz``.

    ``start``/``end`` may be aware datetimes, naive local datetimes, or dates (local
    midnight).
    """
    tzinfo = zone(tz) if isinstance(tz, str) else tz
    size = batch if isinstance(batch, Batch) else Batch.parse(batch)
    first, last = _instant(start, tzinfo), _instant(end, tzinfo)
    if utc(last) <= utc(first):
        raise ScheduleError(f"backfill range is empty: {first.isoformat()} is not before {last.isoformat()}")
    intervals: list[Interval] = []
    lower = first
    for k in range(1, MAX_BATCHES + 1):
        upper = size.shift(first, tzinfo, k)
        if utc(upper) <= utc(lower):
            raise ScheduleError(f"batch {size.text} does not advance from {lower.isoformat()}")
        if utc(upper) >= utc(last):
            intervals.append((lower, last))
            break
        intervals.append((lower, upper))
        lower = upper
    else:
        raise ScheduleError(f"backfill of more than {MAX_BATCHES} batches of {size.text}; use a larger batch")
    return intervals[::-1] if backwards else intervals


def plan_schedule_aligned(
    schedule: Schedule,
    start: datetime | date,
    end: datetime | date,
    *,
    backwards: bool = False,
) -> list[Fire]:
    """The schedule's fires whose data interval lies inside ``[start, end]``, oldest first.

    ``start``/``end`` as in :func:`plan_batches`, read in the schedule's timezone.
    """
    first, last = utc(_instant(start, schedule.tz)), utc(_instant(end, schedule.tz))
    fires = [
        f
        for f in schedule.fires(first, until=last)
        if isinstance(f, Fire) and utc(f.data_interval_start) >= first and utc(f.data_interval_end) <= last
    ]
    return fires[::-1] if backwards else fires


def _instant(value: datetime | date, tz: ZoneInfo) -> datetime:
    """An aware datetime in ``tz``: naive datetimes and dates are local wall times."""
    if not isinstance(value, datetime):
        return localize(datetime.combine(value, time()), tz)
    if value.tzinfo is None:
        return localize(value, tz)
    return value.astimezone(tz)
