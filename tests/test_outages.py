"""Outage windows: one-off and recurring, in their own timezones, chained; defer and skip in schedules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from scheduler.outages import Outage, OutageError, OutageSet
from scheduler.schedules import Dropped, Fire, Schedule

MAINTENANCE = {"cron": "0 2 * * sun", "duration": "2h", "timezone": "Europe/London"}
XMAS = {"start": "2026-12-24T18:00", "end": "2026-12-27T06:00", "timezone": "America/New_York"}


def z(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_one_off_window_is_half_open_in_its_timezone() -> None:
    xmas = Outage.from_spec("xmas", XMAS)
    assert xmas.window_containing(z("2026-12-24T22:59")) is None  # 17:59 EST
    assert xmas.window_containing(z("2026-12-24T23:00")) == (z("2026-12-24T23:00"), z("2026-12-27T11:00"))
    assert xmas.window_containing(z("2026-12-27T10:59:59")) is not None
    assert xmas.window_containing(z("2026-12-27T11:00")) is None  # the end is not inside


def test_recurring_window_follows_its_own_dst() -> None:
    maintenance = Outage.from_spec("maintenance", MAINTENANCE)
    # 02:00 London is 02:00Z in winter and 01:00Z in summer.
    assert maintenance.window_containing(z("2026-01-04T02:00")) == (z("2026-01-04T02:00"), z("2026-01-04T04:00"))
    assert maintenance.window_containing(z("2026-01-04T01:59")) is None
    assert maintenance.window_containing(z("2026-07-05T01:00")) == (z("2026-07-05T01:00"), z("2026-07-05T03:00"))
    assert maintenance.window_containing(z("2026-07-05T03:00")) is None
    assert maintenance.window_containing(z("2026-07-06T01:30")) is None  # a Monday


def test_recurring_window_in_the_repeated_hour_lasts_elapsed_time() -> None:
    nightly = Outage.from_spec("nightly", {"cron": "30 1 * * *", "duration": "1h", "timezone": "America/New_York"})
    # 2026-11-01: 01:30 EDT (05:30Z) starts the window; it ends one hour later, 01:30 EST (06:30Z).
    assert nightly.window_containing(z("2026-11-01T06:15")) == (z("2026-11-01T05:30"), z("2026-11-01T06:30"))
    assert nightly.window_containing(z("2026-11-01T06:30")) is None


def test_outage_set_chains_overlapping_and_adjacent_windows() -> None:
    outages = OutageSet.of(
        [
            Outage.from_spec("xmas", XMAS),
            Outage.from_spec(
                "cleanup", {"start": "2026-12-27T06:00", "end": "2026-12-27T08:00", "timezone": "America/New_York"}
            ),
            Outage.from_spec(
                "late", {"start": "2026-12-27T07:30", "end": "2026-12-27T09:00", "timezone": "America/New_York"}
            ),
        ]
    )
    assert outages.find(z("2026-12-25T12:00")) == ("xmas", z("2026-12-24T23:00"), z("2026-12-27T14:00"))
    assert outages.find(z("2026-12-27T12:00")) == ("cleanup", z("2026-12-27T11:00"), z("2026-12-27T14:00"))
    assert outages.find(z("2026-12-27T14:00")) is None
    assert outages.block_start(z("2026-12-27T13:00")) == z("2026-12-24T23:00")
    assert outages.block_start(z("2026-12-28T00:00")) == z("2026-12-28T00:00")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**MAINTENANCE, "start": "2026-12-24T18:00"}, "not both"),
        ({"start": "2026-12-24T18:00"}, "needs either start and end"),
        ({"start": "2026-12-27T06:00", "end": "2026-12-24T18:00"}, "before it starts"),
        ({"cron": "0 2 * * sun", "duration": "2 hours"}, "not a duration"),
        ({"cron": "0 2 * * sun", "duration": "0s"}, "duration of zero"),
        ({**MAINTENANCE, "timezone": "Europe/Londn"}, "did you mean Europe/London"),
        ({"start": "2026-12-24T18:00-05:00", "end": "2026-12-27T06:00"}, "put the zone in 'timezone'"),
        ({**MAINTENANCE, "every": "week"}, "unknown keys every"),
    ],
)
def test_outage_errors_are_for_people(spec: dict[str, object], message: str) -> None:
    with pytest.raises(OutageError, match=message):
        Outage.from_spec("w", spec)


def saturday_night(policy: str = "defer") -> Schedule:
    """21:00 New York on Saturdays, guarded by Sunday 02:00 London maintenance."""
    return Schedule.from_spec(
        {"cron": "0 21 * * sat", "timezone": "America/New_York", "outages": ["maintenance"], "outage_policy": policy},
        outages={"maintenance": MAINTENANCE},
    )


def test_defer_moves_due_to_the_end_of_a_window_in_another_timezone() -> None:
    schedule = saturday_night()
    winter = schedule.next_fires(z("2026-01-01T00:00"), 1)[0]
    # Sat 21:00 EST = Sun 02:00Z = 02:00 London: inside [02:00Z, 04:00Z).
    assert winter.logical_date.isoformat() == "2026-01-03T21:00:00-05:00"
    assert winter.due.isoformat() == "2026-01-03T23:00:00-05:00"
    assert winter.deferred_by == "maintenance"
    assert winter.data_interval_end == winter.logical_date  # outages never move data
    # Between the US (Mar 8) and UK (Mar 29) changes, 21:00 EDT is 01:00 London: before the window.
    march = schedule.next_fires(z("2026-03-14T00:00"), 1)[0]
    assert march.due == march.logical_date and march.deferred_by is None
    summer = schedule.next_fires(z("2026-07-01T00:00"), 1)[0]
    assert summer.due.isoformat() == "2026-07-04T23:00:00-04:00"


def test_skip_drops_with_the_outage_name() -> None:
    items = list(saturday_night("skip").fires(z("2026-01-01T00:00"), n=1))
    # Every winter Saturday 21:00 EST is 02:00 London; from Mar 8 to Mar 28 it is 01:00 London.
    *dropped, fire = items
    assert [d.at.date() for d in dropped] == [date(2026, 1, 3) + timedelta(weeks=k) for k in range(10)]
    assert {d.reason for d in dropped} == {"outage: maintenance"}
    assert dropped[0].at.isoformat() == "2026-01-03T21:00:00-05:00"
    assert isinstance(fire, Fire)
    assert fire.logical_date.isoformat() == "2026-03-14T21:00:00-04:00"
    # And again from the first Saturday after London's change (Mar 29) on.
    assert isinstance(next(saturday_night("skip").fires(z("2026-03-28T02:00"))), Dropped)


def test_defer_chains_through_adjacent_windows() -> None:
    schedule = Schedule.from_spec(
        {"cron": "0 12 * * *", "timezone": "America/New_York", "outages": ["xmas", "cleanup"]},
        outages={
            "xmas": XMAS,
            "cleanup": {"start": "2026-12-27T06:00", "end": "2026-12-27T08:00", "timezone": "America/New_York"},
        },
    )
    fires = schedule.next_fires(z("2026-12-24T00:00"), 5)
    assert [(f.logical_date.day, f.due.day, f.due.hour) for f in fires] == [
        (24, 24, 12),
        (25, 27, 8),
        (26, 27, 8),
        (27, 27, 12),
        (28, 28, 12),
    ]


def test_due_between_creates_deferred_runs_when_the_window_ends() -> None:
    schedule = saturday_night()
    # The fire at 02:00Z is inside the window until 04:00Z.
    assert schedule.due_between(z("2026-01-04T01:00"), z("2026-01-04T03:00")) == ([], 0)
    fires, missed = schedule.due_between(z("2026-01-04T03:00"), z("2026-01-04T04:00"))
    assert [f.logical_date.isoformat() for f in fires] == ["2026-01-03T21:00:00-05:00"]
    assert missed == 0
    assert schedule.due_between(z("2026-01-04T04:00"), z("2026-01-04T05:00")) == ([], 0)
