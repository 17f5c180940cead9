"""Business-day calendars on real holidays data, and the DST rule for wall-clock times."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from scheduler.calendars import (
    Calendar,
    CalendarError,
    localize,
    ordinal,
    resolve,
    source_holidays,
    zone,
)

# Derived by hand: month ends falling on weekends step back to Friday; 2027-05-31 is
# Memorial Day (so Friday the 28th); 2027-12-31 is a Friday and NYSE does not observe
# New Year's Day 2028 (a Saturday) on it.
NYSE_LAST_2026 = [
    date(2026, 1, 30),  # Jan 31 Sat
    date(2026, 2, 27),  # Feb 28 Sat
    date(2026, 3, 31),
    date(2026, 4, 30),
    date(2026, 5, 29),  # May 30-31 weekend
    date(2026, 6, 30),
    date(2026, 7, 31),
    date(2026, 8, 31),
    date(2026, 9, 30),
    date(2026, 10, 30),  # Oct 31 Sat
    date(2026, 11, 30),
    date(2026, 12, 31),
]
NYSE_LAST_2027 = [
    date(2027, 1, 29),  # Jan 30-31 weekend
    date(2027, 2, 26),  # Feb 27-28 weekend
    date(2027, 3, 31),
    date(2027, 4, 30),
    date(2027, 5, 28),  # May 31 Memorial Day, 29-30 weekend
    date(2027, 6, 30),
    date(2027, 7, 30),  # Jul 31 Sat
    date(2027, 8, 31),
    date(2027, 9, 30),
    date(2027, 10, 29),  # Oct 30-31 weekend
    date(2027, 11, 30),
    date(2027, 12, 31),
]
# Jan 1 New Year's Day; Feb/Mar/Nov 1 Sundays; Aug 1 a Saturday.
GB_FIRST_2026 = [
    date(2026, 1, 2),
    date(2026, 2, 2),
    date(2026, 3, 2),
    date(2026, 4, 1),
    date(2026, 5, 1),
    date(2026, 6, 1),
    date(2026, 7, 1),
    date(2026, 8, 3),
    date(2026, 9, 1),
    date(2026, 10, 1),
    date(2026, 11, 2),
    date(2026, 12, 1),
]


def test_nyse_last_business_day_of_every_month_2026_2027() -> None:
    nyse = resolve("NYSE", {})
    assert [nyse.nth_business_day(2026, m, -1) for m in range(1, 13)] == NYSE_LAST_2026
    assert [nyse.nth_business_day(2027, m, -1) for m in range(1, 13)] == NYSE_LAST_2027


def test_gb_first_business_day_of_every_month_2026() -> None:
    gb = resolve("GB", {})
    assert [gb.nth_business_day(2026, m, 1) for m in range(1, 13)] == GB_FIRST_2026


def test_nth_business_day_counts_from_both_ends() -> None:
    nyse = resolve("NYSE", {})
    # November 2026: Thanksgiving on the 26th; weekdays 2-6, 9-13, 16-20, 23-25, 27, 30.
    assert nyse.nth_business_day(2026, 11, 2) == date(2026, 11, 3)
    assert nyse.nth_business_day(2026, 11, -2) == date(2026, 11, 27)
    assert nyse.nth_business_day(2026, 11, 20) == date(2026, 11, 30)
    assert nyse.nth_business_day(2026, 11, 21) is None
    with pytest.raises(CalendarError, match="business day 0"):
        nyse.nth_business_day(2026, 11, 0)


def test_why_not_in_peoples_words() -> None:
    nyse = resolve("NYSE", {})
    assert nyse.why_not(date(2026, 11, 26)) == "holiday: Thanksgiving Day (NYSE)"
    assert nyse.why_not(date(2026, 11, 28)) == "weekend (Saturday)"
    assert nyse.why_not(date(2026, 11, 29)) == "weekend (Sunday)"
    assert nyse.why_not(date(2026, 4, 3)) == "holiday: Good Friday (NYSE)"
    assert nyse.why_not(date(2026, 11, 27)) is None
    assert nyse.is_business_day(date(2026, 11, 27))
    # Columbus Day is a US federal holiday but NYSE trades.
    assert nyse.is_business_day(date(2026, 10, 12))
    assert not resolve("US", {}).is_business_day(date(2026, 10, 12))


def test_inline_calendar_from_the_example() -> None:
    ops = Calendar.from_spec(
        "ops",
        {
            "weekdays": ["mon", "tue", "wed", "thu", "fri"],
            "holidays": ["US", "NYSE"],
            "extra_holidays": ["2026-12-24"],
            "extra_business_days": ["2026-11-28"],
        },
    )
    assert ops.why_not(date(2026, 12, 24)) == "extra holiday"
    assert ops.why_not(date(2026, 11, 28)) is None  # a Saturday made a business day
    assert ops.why_not(date(2026, 10, 12)) == "holiday: Columbus Day (US)"
    assert ops.why_not(date(2026, 4, 3)) == "holiday: Good Friday (NYSE)"  # not a US federal holiday
    assert ops.nth_business_day(2026, 11, -1) == date(2026, 11, 30)


def test_inline_calendar_variants() -> None:
    cal = Calendar.from_spec(
        "gulf",
        {"weekdays": ["sun", "Monday", "tue", "wed", "thu"], "extra_holidays": {date(2026, 3, 5): "Audit day"}},
    )
    assert cal.why_not(date(2026, 3, 6)) == "weekend (Friday)"
    assert cal.is_business_day(date(2026, 3, 8))  # a Sunday
    assert cal.why_not(date(2026, 3, 5)) == "extra holiday: Audit day"
    with pytest.raises(CalendarError, match="not a weekday"):
        Calendar.from_spec("bad", {"weekdays": ["funday"]})
    with pytest.raises(CalendarError, match="no working weekdays"):
        Calendar.from_spec("bad", {"weekdays": []})
    with pytest.raises(CalendarError, match="unknown keys holiday"):
        Calendar.from_spec("bad", {"holiday": ["US"]})
    with pytest.raises(CalendarError, match="not a date"):
        Calendar.from_spec("bad", {"extra_holidays": ["24/12/2026"]})


def test_builtin_names_aliases_and_subdivisions() -> None:
    assert resolve("XNYS", {}).why_not(date(2026, 11, 26)) == "holiday: Thanksgiving Day (NYSE)"
    assert resolve("nyse", {}).sources == ("NYSE",)
    assert resolve("UK", {}).sources == ("GB",)
    # Scotland keeps 2 January; England does not.
    assert resolve("GB-SCT", {}).why_not(date(2026, 1, 2)) is not None
    assert resolve("GB-ENG", {}).is_business_day(date(2026, 1, 2))
    with pytest.raises(CalendarError, match="unknown subdivision 'XYZ' of GB"):
        resolve("GB-XYZ", {})


def test_named_calendars_come_first() -> None:
    mine = Calendar("NYSE", extra_holidays={date(2026, 6, 1): "team offsite"})
    assert resolve("NYSE", {"NYSE": mine}) is mine
    assert resolve({"weekdays": ["sat"]}, {}).is_business_day(date(2026, 6, 6))


def test_unknown_calendar_lists_close_matches() -> None:
    with pytest.raises(CalendarError) as err:
        resolve("NYSR", {"nyse_ops": Calendar("nyse_ops")})
    message = str(err.value)
    assert message.startswith("unknown calendar 'NYSR'; did you mean")
    assert "NYSE" in message
    assert "XNYS" in message


def test_unknown_timezone_lists_close_matches() -> None:
    with pytest.raises(CalendarError, match="did you mean America/New_York"):
        zone("America/New_Yrok")


def test_holiday_lookups_are_cached_per_source_and_year() -> None:
    nyse = resolve("NYSE", {})
    source_holidays.cache_clear()
    first, last = date(2026, 1, 1).toordinal(), date(2028, 12, 31).toordinal()
    for ordinal_day in range(first, last + 1):
        nyse.is_business_day(date.fromordinal(ordinal_day))
    info = source_holidays.cache_info()
    assert info.misses == 3  # 2026, 2027, 2028
    assert info.hits > 700


def test_localize_gap_runs_at_first_instant_after_it() -> None:
    ny = zone("America/New_York")
    assert localize(datetime(2026, 3, 8, 2, 30), ny).astimezone(UTC) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert localize(datetime(2026, 3, 8, 2, 0), ny).astimezone(UTC) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    lord_howe = zone("Australia/Lord_Howe")  # a 30-minute DST shift: 02:00 -> 02:30
    gap = localize(datetime(2026, 10, 4, 2, 15), lord_howe)
    assert (gap.hour, gap.minute) == (2, 30)


def test_localize_overlap_takes_first_occurrence() -> None:
    ny = zone("America/New_York")
    first = localize(datetime(2026, 11, 1, 1, 30), ny)
    assert first.astimezone(UTC) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # EDT, not EST


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 21, -1, -2, -3)] == [
        "first",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "21st",
        "last",
        "2nd to last",
        "3rd to last",
    ]
