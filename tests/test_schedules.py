"""Schedules: exact fire tables (calendars, DST), catchup, and properties against a brute-force minute walk."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.durations import DURATION_PATTERN
from scheduler.schedules import Batch, Dropped, Fire, Schedule, ScheduleError
from tests.test_calendars import NYSE_LAST_2026, NYSE_LAST_2027

EXAMPLE = yaml.safe_load(
    """
schedule:
  cron: "0 17 * * *"
  timezone: America/New_York
  calendar: NYSE
  business_day: -1
  roll: skip
  catchup: false
  max_catchup: 50
  outages: [maintenance]
  outage_policy: defer
batch: 1d
calendars:
  ops: {weekdays: [mon, tue, wed, thu, fri], holidays: [US, NYSE], extra_holidays: ["2026-12-24"],
        extra_business_days: ["2026-11-28"]}
outages:
  maintenance: {cron: "0 2 * * sun", duration: 2h, timezone: Europe/London}
  xmas: {start: "2026-12-24T18:00", end: "2026-12-27T06:00", timezone: America/New_York}
"""
)


def example(**changes: object) -> Schedule:
    spec = {**EXAMPLE["schedule"], **changes}
    return Schedule.from_spec(spec, calendars=EXAMPLE["calendars"], outages=EXAMPLE["outages"], batch=EXAMPLE["batch"])


def z(text: str) -> datetime:
    """A UTC instant from ``2026-03-08T07:00``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def utcs(schedule: Schedule, after: datetime, n: int) -> list[datetime]:
    return [f.utc for f in schedule.next_fires(after, n)]


# ------------------------------------------------------------------------ the example


def test_example_fires_on_the_last_nyse_business_day_at_1700_new_york() -> None:
    fires = [f for f in example().fires(z("2026-01-01T00:00"), until=z("2028-01-01T00:00")) if isinstance(f, Fire)]
    assert [f.logical_date.date() for f in fires] == NYSE_LAST_2026 + NYSE_LAST_2027
    for f in fires:
        local = f.logical_date
        assert (local.hour, local.minute, local.tzinfo.key) == (17, 0, "America/New_York")
        # 17:00 New York is 22:00 UTC in winter, 21:00 in summer.
        assert f.utc.hour == (21 if local.utcoffset() == timedelta(hours=-4) else 22)
        assert f.due == f.logical_date  # the London maintenance window is Sunday night
        assert f.data_interval_end == f.logical_date
        assert f.data_interval_end.astimezone(UTC) - f.data_interval_start.astimezone(UTC) == timedelta(days=1)


def test_ctl_next_explains_every_dropped_day() -> None:
    items = list(example().fires(z("2026-11-20T00:00"), n=1))
    reasons = [(i.at.date().isoformat(), i.reason) for i in items if isinstance(i, Dropped)]
    assert reasons == [
        ("2026-11-20", "not the last business day of the month"),
        ("2026-11-21", "weekend (Saturday)"),
        ("2026-11-22", "weekend (Sunday)"),
        ("2026-11-23", "not the last business day of the month"),
        ("2026-11-24", "not the last business day of the month"),
        ("2026-11-25", "not the last business day of the month"),
        ("2026-11-26", "holiday: Thanksgiving Day (NYSE)"),
        ("2026-11-27", "not the last business day of the month"),
        ("2026-11-28", "weekend (Saturday)"),
        ("2026-11-29", "weekend (Sunday)"),
    ]
    assert isinstance(items[-1], Fire)
    assert items[-1].logical_date.isoformat() == "2026-11-30T17:00:00-05:00"


def test_inline_named_calendar_and_second_business_day() -> None:
    schedule = example(calendar="ops", business_day=2)
    items = list(schedule.fires(z("2026-11-25T00:00"), n=1))
    fire = items[-1]
    assert isinstance(fire, Fire)
    # ops makes Saturday Nov 28 a business day, so December's 2nd is Wednesday Dec 2.
    assert fire.logical_date.date() == date(2026, 12, 2)
    assert ("2026-11-28", "not the 2nd business day of the month") in [
        (i.at.date().isoformat(), i.reason) for i in items if isinstance(i, Dropped)
    ]
    assert example(calendar="ops", business_day=-1).next_fires(z("2026-12-01T00:00"), 1)[0].logical_date.date() == (
        date(2026, 12, 31)
    )


def test_roll_following_and_preceding() -> None:
    base = {"cron": "0 9 15 * *", "timezone": "Europe/London", "calendar": "GB"}
    following = Schedule.from_spec({**base, "roll": "following"})
    # 2026-02-15 and 2026-03-15 are Sundays, 2026-08-15 a Saturday.
    got = [f.logical_date.date() for f in following.next_fires(z("2026-01-01T00:00"), 8)]
    assert got[:3] == [date(2026, 1, 15), date(2026, 2, 16), date(2026, 3, 16)]
    assert date(2026, 8, 17) in got
    rolled = following.next_fires(z("2026-02-01T00:00"), 1)[0]
    assert rolled.rolled_from is not None and rolled.rolled_from.date() == date(2026, 2, 15)
    preceding = Schedule.from_spec({**base, "roll": "preceding"})
    got = [f.logical_date.date() for f in preceding.next_fires(z("2026-01-01T00:00"), 3)]
    assert got == [date(2026, 1, 15), date(2026, 2, 13), date(2026, 3, 13)]


def test_roll_onto_a_time_that_runs_anyway_runs_once() -> None:
    daily = Schedule.from_spec({"cron": "0 9 * * *", "calendar": "GB", "roll": "following"})
    items = list(daily.fires(z("2026-01-09T12:00"), until=z("2026-01-13T00:00")))
    fires = [i.logical_date.date() for i in items if isinstance(i, Fire)]
    assert fires == [date(2026, 1, 12)]
    assert [i.reason for i in items if isinstance(i, Dropped)] == [
        "weekend (Saturday); rolled following onto a time that runs anyway",
        "weekend (Sunday); rolled following onto a time that runs anyway",
    ]


def test_business_day_without_calendar_means_mon_to_fri() -> None:
    schedule = Schedule.from_spec({"cron": "0 6 * * *", "business_day": 1})
    assert [f.logical_date.date() for f in schedule.next_fires(z("2026-01-31T00:00"), 3)] == [
        date(2026, 2, 2),
        date(2026, 3, 2),
        date(2026, 4, 1),
    ]


def test_list_of_crons_merges_and_deduplicates() -> None:
    schedule = Schedule.from_spec({"cron": ["0 9 * * *", "0 9,18 * * *"], "timezone": "Europe/Paris"})
    got = [f.logical_date.isoformat() for f in schedule.next_fires(z("2026-06-01T00:00"), 3)]
    assert got == ["2026-06-01T09:00:00+02:00", "2026-06-01T18:00:00+02:00", "2026-06-02T09:00:00+02:00"]


def test_six_fields_have_seconds_last() -> None:
    schedule = Schedule.from_spec({"cron": "* * * * * */20"})
    assert utcs(schedule, z("2026-01-01T00:00"), 4) == [
        z("2026-01-01T00:00:20"),
        z("2026-01-01T00:00:40"),
        z("2026-01-01T00:01:00"),
        z("2026-01-01T00:01:20"),
    ]


def test_data_interval_without_batch_is_previous_fire_to_this_one() -> None:
    schedule = example(**{"outages": []})
    schedule = Schedule(
        schedule.crons, schedule.tz, schedule.calendar, schedule.business_day, catchup=False, batch=None
    )
    first, second = schedule.next_fires(z("2026-02-01T00:00"), 2)
    assert first.data_interval_start.isoformat() == "2026-01-30T17:00:00-05:00"
    assert first.data_interval_end == first.logical_date
    assert second.data_interval_start == first.logical_date


def test_monthly_batch_is_a_calendar_month() -> None:
    schedule = Schedule.from_spec({"cron": "0 0 1 * *", "timezone": "America/New_York"}, batch="1mo")
    fire = schedule.next_fires(z("2026-03-15T00:00"), 1)[0]
    assert fire.data_interval_start.isoformat() == "2026-03-01T00:00:00-05:00"
    assert fire.data_interval_end.isoformat() == "2026-04-01T00:00:00-04:00"


# ------------------------------------------------------------------------ DST tables

DAILY_0230 = {
    # zone: (after, expected UTC fires)
    "America/New_York": [
        ("2026-03-06T12:00", ["2026-03-07T07:30", "2026-03-08T07:00", "2026-03-09T06:30"]),  # gap: 03:00 EDT
        ("2026-10-30T12:00", ["2026-10-31T06:30", "2026-11-01T07:30", "2026-11-02T07:30"]),
    ],
    "Europe/London": [
        ("2026-03-27T12:00", ["2026-03-28T02:30", "2026-03-29T01:30", "2026-03-30T01:30"]),
        ("2026-10-23T12:00", ["2026-10-24T01:30", "2026-10-25T02:30", "2026-10-26T02:30"]),
    ],
    "Australia/Sydney": [
        # Apr 5: 02:00-02:59 happens twice; 02:30 runs at the first (AEDT, +11).
        ("2026-04-03T00:00", ["2026-04-03T15:30", "2026-04-04T15:30", "2026-04-05T16:30"]),
        # Oct 4: 02:00-02:59 does not happen; 02:30 runs at 03:00 AEDT.
        ("2026-10-02T00:00", ["2026-10-02T16:30", "2026-10-03T16:00", "2026-10-04T15:30"]),
    ],
}
DAILY_0130 = {
    "America/New_York": [("2026-10-31T12:00", ["2026-11-01T05:30", "2026-11-02T06:30"])],  # EDT first pass
    "Europe/London": [
        ("2026-03-28T12:00", ["2026-03-29T01:00", "2026-03-30T00:30"]),  # gap: 02:00 BST
        ("2026-10-24T12:00", ["2026-10-25T00:30", "2026-10-26T01:30"]),  # BST first pass
    ],
}
HOURLY = {
    "America/New_York": [
        ("2026-03-08T04:30", ["2026-03-08T05:00", "2026-03-08T06:00", "2026-03-08T07:00", "2026-03-08T08:00"]),
        # 01:00 EST (06:00Z) repeats 01:00 EDT: not again.
        ("2026-11-01T03:30", ["2026-11-01T04:00", "2026-11-01T05:00", "2026-11-01T07:00", "2026-11-01T08:00"]),
    ],
    "Europe/London": [
        ("2026-03-28T23:30", ["2026-03-29T00:00", "2026-03-29T01:00", "2026-03-29T02:00"]),
        ("2026-10-24T22:30", ["2026-10-24T23:00", "2026-10-25T00:00", "2026-10-25T02:00", "2026-10-25T03:00"]),
    ],
    "Australia/Sydney": [
        ("2026-04-04T13:30", ["2026-04-04T14:00", "2026-04-04T15:00", "2026-04-04T17:00", "2026-04-04T18:00"]),
        ("2026-10-03T14:30", ["2026-10-03T15:00", "2026-10-03T16:00", "2026-10-03T17:00"]),
    ],
}


@pytest.mark.parametrize(
    ("cron", "table"), [("30 2 * * *", DAILY_0230), ("30 1 * * *", DAILY_0130), ("0 * * * *", HOURLY)]
)
def test_dst_tables(cron: str, table: dict[str, list[tuple[str, list[str]]]]) -> None:
    for tz, cases in table.items():
        schedule = Schedule.from_spec({"cron": cron, "timezone": tz})
        for after, expected in cases:
            assert utcs(schedule, z(after), len(expected)) == [z(e) for e in expected], (tz, after)


def test_gap_fire_logical_date_is_the_instant_after_the_gap() -> None:
    schedule = Schedule.from_spec({"cron": "30 2 * * *", "timezone": "America/New_York"})
    fire = schedule.next_fires(z("2026-03-07T12:00"), 1)[0]
    assert fire.logical_date.isoformat() == "2026-03-08T03:00:00-04:00"


# ---------------------------------------------------------------- brute-force properties

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Sydney", "Australia/Lord_Howe"]
CRONS = ["*/7 * * * *", "30 2 * * *", "0 * * * *", "15,45 1-3 * * *", "*/20 2 * * *", "59 1 * * *"]
TRANSITIONS = [
    z("2026-03-08T07:00"),
    z("2026-11-01T06:00"),
    z("2026-03-29T01:00"),
    z("2026-10-25T01:00"),
    z("2026-04-04T16:00"),
    z("2026-10-03T16:00"),
    z("2026-04-04T15:00"),  # Lord Howe
    z("2026-10-03T15:30"),
]


def _field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step = part.partition("/")
        if base == "*":
            first, last = low, high
        elif "-" in base:
            first, last = map(int, base.split("-"))
        else:
            first = last = int(base)
        values.update(range(first, last + 1, int(step or 1)))
    return values


def _matcher(cron: str):  # minute and hour only: the tested crons have * for the day fields
    minute, hour = cron.split()[:2]
    minutes, hours = _field(minute, 0, 59), _field(hour, 0, 23)
    return lambda wall: wall.minute in minutes and wall.hour in hours


def brute_force(cron: str, tz: str, start: datetime, end: datetime) -> list[datetime]:
    """Every UTC minute in (start, end] that should fire, by the documented DST rule."""
    from zoneinfo import ZoneInfo

    zone, matches, fires = ZoneInfo(tz), _matcher(cron), []
    minute = timedelta(minutes=1)
    t = start + minute
    while t <= end:
        local = t.astimezone(zone)
        previous = (t - minute).astimezone(zone).replace(tzinfo=None)
        wall = local.replace(tzinfo=None)
        if local.fold == 1 and local.utcoffset() != local.replace(fold=0).utcoffset():
            pass  # the second pass of a repeated wall time: it already fired (or not) the first time
        elif wall - previous > minute:  # t is the first instant after a gap: the skipped walls fire here
            walls = [previous + k * minute for k in range(1, (wall - previous) // minute + 1)]
            if any(matches(w) for w in walls):
                fires.append(t)
        elif matches(wall):
            fires.append(t)
        t += minute
    return fires


@settings(max_examples=150, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    cron=st.sampled_from(CRONS),
    near=st.sampled_from(TRANSITIONS),
    offset=st.integers(min_value=-36 * 60, max_value=24 * 60),
    length=st.integers(min_value=1, max_value=30 * 60),
)
def test_no_valid_minute_skipped_or_repeated(tz: str, cron: str, near: datetime, offset: int, length: int) -> None:
    start = near + timedelta(minutes=offset)
    end = start + timedelta(minutes=length)
    schedule = Schedule.from_spec({"cron": cron, "timezone": tz})
    got = [f.utc for f in schedule.fires(start, until=end) if isinstance(f, Fire)]
    assert got == brute_force(cron, tz, start, end)


@settings(max_examples=150, deadline=None)
@given(
    tz=st.sampled_from(ZONES),
    cron=st.sampled_from(CRONS),
    near=st.sampled_from(TRANSITIONS),
    offset=st.integers(min_value=-3 * 86400, max_value=86400),
    micro=st.integers(min_value=0, max_value=999_999),
)
def test_next_fire_is_strictly_after_and_fires_strictly_increase(
    tz: str, cron: str, near: datetime, offset: int, micro: int
) -> None:
    after = near + timedelta(seconds=offset, microseconds=micro)
    schedule = Schedule.from_spec({"cron": cron, "timezone": tz})
    fires = schedule.next_fires(after, 40)
    assert fires[0].utc > after
    assert all(a.utc < b.utc for a, b in itertools.pairwise(fires))
    walls = [f.logical_date.replace(tzinfo=None) for f in fires]
    assert len(set(walls)) == len(walls)  # no wall time fires twice across a fall-back
    assert all(f.data_interval_end == f.logical_date for f in fires)
    assert all(a.logical_date == b.data_interval_start for a, b in itertools.pairwise(fires))


@settings(max_examples=100, deadline=None)
@given(offset=st.integers(min_value=-2 * 86400, max_value=2 * 86400), n=st.integers(min_value=1, max_value=5))
def test_fires_resume_where_they_left_off(offset: int, n: int) -> None:
    schedule = Schedule.from_spec({"cron": "*/7 * * * *", "timezone": "America/New_York"})
    after = z("2026-11-01T06:00") + timedelta(seconds=offset)
    all_fires = schedule.next_fires(after, 2 * n)
    resumed = schedule.next_fires(all_fires[n - 1].logical_date, n)
    assert [f.utc for f in resumed] == [f.utc for f in all_fires[n:]]


# --------------------------------------------------------------------------- catchup


def hourly(**spec: object) -> Schedule:
    return Schedule.from_spec({"cron": "0 * * * *", **spec})


def test_due_between_one_tick() -> None:
    fires, missed = hourly().due_between(z("2026-05-01T00:30"), z("2026-05-01T01:00"))
    assert [f.utc for f in fires] == [z("2026-05-01T01:00")]
    assert missed == 0
    assert hourly().due_between(z("2026-05-01T01:00"), z("2026-05-01T01:30")) == ([], 0)


def test_catchup_true_creates_oldest_first_up_to_max() -> None:
    fires, missed = hourly(catchup=True, max_catchup=3).due_between(z("2026-05-01T00:00"), z("2026-05-01T05:30"))
    assert [f.utc.hour for f in fires] == [1, 2, 3]
    assert missed == 2


def test_catchup_false_creates_only_the_latest() -> None:
    fires, missed = hourly(catchup=False).due_between(z("2026-05-01T00:00"), z("2026-05-01T05:30"))
    assert [f.utc.hour for f in fires] == [5]
    assert missed == 4
    fires, missed = hourly().due_between(z("2026-05-01T00:00"), z("2026-05-01T05:30"), catchup=True, max_catchup=10)
    assert len(fires) == 5 and missed == 0


# ------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"cron": "0 17 * *"}, r"is not a cron expression \(croniter: Exactly 5, 6 or 7 columns"),
        ({"cron": "0 25 * * *"}, r"out of range\); e\.g\. \"0 17"),
        ({"cron": "0 17 * * *", "timezone": "America/New_Yrok"}, "did you mean America/New_York"),
        ({"cron": "0 17 * * *", "calendar": "NYSR"}, "unknown calendar 'NYSR'; did you mean"),
        ({"cron": "0 17 * * *", "roll": "next"}, "roll must be skip|following|preceding"),
        ({"cron": "0 17 * * *", "business_day": 0}, "business_day 0"),
        ({"cron": "0 17 * * *", "outages": ["maintenace"]}, "unknown outage 'maintenace'; did you mean maintenance"),
        ({"cron": "0 17 * * *", "catchpu": True}, "unknown key 'catchpu'; did you mean 'catchup'"),
        ({"timezone": "UTC"}, "'cron' is required"),
    ],
)
def test_spec_errors_are_for_people(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ScheduleError, match=message.replace("|", r"\|")):
        Schedule.from_spec(spec, outages=EXAMPLE["outages"])


def test_batch_parsing() -> None:
    assert Batch.parse("1d").days == 1
    assert Batch.parse("1w").days == 7
    assert Batch.parse("6h").elapsed == timedelta(hours=6)
    assert Batch.parse("3mo").months == 3
    for bad in ("1y", "0mo", "0s", "1 day"):
        with pytest.raises(ScheduleError):
            Batch.parse(bad)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ScheduleError, match="timezone-aware"):
        hourly().next_fires(datetime(2026, 1, 1), 1)


# ----------------------------------------------------------------------------- schema

SCHEMA = json.loads((Path(__file__).parent.parent / "schemas" / "dag.schema.json").read_text())


def validator(name: str) -> jsonschema.Draft202012Validator:
    doc = {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{name}"}
    return jsonschema.Draft202012Validator(doc, format_checker=jsonschema.FormatChecker())


def test_schema_is_valid_and_accepts_the_example() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator("schedule").validate(EXAMPLE["schedule"])
    validator("calendars").validate(EXAMPLE["calendars"])
    validator("outages").validate(EXAMPLE["outages"])
    validator("batch").validate(EXAMPLE["batch"])
    validator("batch").validate("1mo")
    validator("schedule").validate({"cron": ["0 9 * * *", "0 18 * * * 30"], "calendar": {"weekdays": ["sat"]}})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("schedule", {"cron": "0 17 * * *", "catchpu": True}),
        ("schedule", {"cron": "0 17 * * *", "business_day": 0}),
        ("schedule", {"cron": "0 17 * * *", "roll": "next"}),
        ("schedule", {"timezone": "UTC"}),
        ("calendar", {"weekdays": ["funday"]}),
        ("calendar", {"extra_holidays": ["24/12/2026"]}),
        ("outage", {"cron": "0 2 * * sun", "duration": "2 hours"}),
        ("outage", {"cron": "0 2 * * sun", "duration": "2h", "start": "2026-12-24T18:00"}),
        ("outage", {"start": "2026-12-24T18:00"}),
        ("batch", "1y"),
        ("batch", "1 d"),
    ],
)
def test_schema_rejects(name: str, value: object) -> None:
    assert list(validator(name).iter_errors(value))


def test_schema_durations_use_the_one_duration_pattern() -> None:
    defs = SCHEMA["$defs"]
    assert defs["outage"]["properties"]["duration"]["pattern"] == DURATION_PATTERN
    assert {"pattern": DURATION_PATTERN} in defs["batch"]["anyOf"]


def test_schema_is_self_contained_and_described() -> None:
    names = {"schedule", "calendar", "calendars", "outage", "outages", "batch"}
    defs = {name: SCHEMA["$defs"][name] for name in names}
    text = json.dumps(defs)
    refs = {part.split('"')[0] for part in text.split('"$ref": "')[1:]}
    assert refs <= {f"#/$defs/{name}" for name in defs}
    for name, schema in defs.items():
        assert schema.get("description"), name
        for key, prop in schema.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{key}"
        if schema.get("type") == "object" and "properties" in schema:
            assert schema["additionalProperties"] is False, name
