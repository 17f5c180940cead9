"""Backfill plans: fixed batches in the DAG timezone, and schedule-aligned intervals."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from scheduler.backfill import plan_batches, plan_schedule_aligned
from scheduler.schedules import Schedule, ScheduleError
from tests.test_calendars import NYSE_LAST_2026


def hours(interval: tuple[datetime, datetime]) -> float:
    start, end = interval
    return (end.astimezone(UTC) - start.astimezone(UTC)) / timedelta(hours=1)


def test_daily_first_week_of_november_is_seven_batches_with_a_25_hour_day() -> None:
    plan = plan_batches(date(2026, 11, 1), date(2026, 11, 8), "1d", "America/New_York")
    assert len(plan) == 7
    assert [start.date() for start, _ in plan] == [date(2026, 11, d) for d in range(1, 8)]
    assert [hours(i) for i in plan] == [25, 24, 24, 24, 24, 24, 24]
    assert all(s.hour == 0 and e.hour == 0 for s, e in plan)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(plan))


def test_spring_forward_day_is_23_hours() -> None:
    plan = plan_batches(date(2026, 3, 28), date(2026, 3, 31), "1d", "Europe/London")
    assert [hours(i) for i in plan] == [24, 23, 24]
    sydney = plan_batches(date(2026, 10, 3), date(2026, 10, 5), "1d", "Australia/Sydney")
    assert [hours(i) for i in sydney] == [24, 23]


def test_hour_batches_are_elapsed_time() -> None:
    plan = plan_batches(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC), "6h", "America/New_York")
    assert [hours(i) for i in plan] == [6, 6, 6, 6]


def test_monthly_batches_are_calendar_months() -> None:
    plan = plan_batches(date(2026, 1, 1), date(2027, 1, 1), "1mo", "America/New_York")
    assert len(plan) == 12
    assert [s.date() for s, _ in plan] == [date(2026, m, 1) for m in range(1, 13)]
    assert plan[-1][1].date() == date(2027, 1, 1)
    assert hours(plan[1]) == 28 * 24  # February
    assert hours(plan[2]) == 31 * 24 - 1  # March loses the spring-forward hour


def test_month_batches_from_the_31st_do_not_drift() -> None:
    plan = plan_batches(date(2026, 1, 31), date(2026, 5, 31), "1mo", "UTC")
    assert [e.date() for _, e in plan] == [date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30), date(2026, 5, 31)]


def test_weekly_and_partial_last_batch() -> None:
    plan = plan_batches(date(2026, 3, 2), date(2026, 3, 20), "1w", "America/New_York")
    assert [(s.date(), e.date()) for s, e in plan] == [
        (date(2026, 3, 2), date(2026, 3, 9)),
        (date(2026, 3, 9), date(2026, 3, 16)),
        (date(2026, 3, 16), date(2026, 3, 20)),  # cut at the end of the range
    ]
    assert hours(plan[0]) == 7 * 24 - 1


def test_backwards_is_newest_first() -> None:
    forwards = plan_batches(date(2026, 11, 1), date(2026, 11, 8), "1d", "America/New_York")
    backwards = plan_batches(date(2026, 11, 1), date(2026, 11, 8), "1d", "America/New_York", backwards=True)
    assert backwards == forwards[::-1]
    assert backwards[0][0].date() == date(2026, 11, 7)


def test_naive_and_aware_bounds() -> None:
    local = plan_batches(datetime(2026, 6, 1, 6), datetime(2026, 6, 1, 18), "6h", "Europe/Paris")
    assert [s.hour for s, _ in local] == [6, 12]
    aware = plan_batches(
        datetime(2026, 6, 1, 4, tzinfo=UTC), datetime(2026, 6, 1, 16, tzinfo=UTC), "6h", "Europe/Paris"
    )
    assert aware == local


def test_bad_plans() -> None:
    with pytest.raises(ScheduleError, match="empty"):
        plan_batches(date(2026, 11, 8), date(2026, 11, 1), "1d", "UTC")
    with pytest.raises(ScheduleError, match="not a duration"):
        plan_batches(date(2026, 11, 1), date(2026, 11, 8), "1 day", "UTC")


def nyse_month_end() -> Schedule:
    return Schedule.from_spec(
        {"cron": "0 17 * * *", "timezone": "America/New_York", "calendar": "NYSE", "business_day": -1}
    )


def test_schedule_aligned_gives_one_interval_per_fire_inside_the_range() -> None:
    fires = plan_schedule_aligned(nyse_month_end(), date(2026, 1, 1), date(2026, 12, 31))
    # January's interval starts on 2025-12-31, outside the range; December's ends at 17:00 on the 31st,
    # after the range's end (local midnight).
    assert [f.logical_date.date() for f in fires] == NYSE_LAST_2026[1:-1]
    assert fires[0].data_interval_start.date() == NYSE_LAST_2026[0]
    assert all(a.logical_date == b.data_interval_start for a, b in itertools.pairwise(fires))


def test_schedule_aligned_applies_calendars_and_skip_outages_and_backwards() -> None:
    schedule = Schedule.from_spec(
        {
            "cron": "0 6 * * *",
            "timezone": "America/New_York",
            "calendar": "NYSE",
            "outages": ["freeze"],
            "outage_policy": "skip",
        },
        outages={"freeze": {"start": "2026-11-24T00:00", "end": "2026-11-25T00:00", "timezone": "America/New_York"}},
        batch="1d",
    )
    fires = plan_schedule_aligned(schedule, date(2026, 11, 19), date(2026, 11, 28))
    # Intervals [06:00 the day before, 06:00): the 19th starts on the 18th; 21-22 weekend, 24 frozen,
    # 26 Thanksgiving.
    assert [f.logical_date.day for f in fires] == [20, 23, 25, 27]
    assert [
        f.logical_date.day
        for f in plan_schedule_aligned(schedule, date(2026, 11, 19), date(2026, 11, 28), backwards=True)
    ] == [27, 25, 23, 20]
