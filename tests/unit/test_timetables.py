"""BillingMonthTimetable: a backfill range bills the months a person means, typed in the UI
(From at 00:00, To at 23:59:59.999 of the dates, in the UI's timezone) or the CLI (midnights in
[core] default_timezone), in any timezone from UTC-10:45 to UTC+13, across DST changes; the
scheduler's own use is unchanged; runs are named by their month."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pendulum
import pytest
from airflow.timetables.base import DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable
from airflow.utils.types import DagRunType

from cdr_billing.months import BillingMonth
from cdr_billing.timetables import (
    BillingMonthTimetable,
    billing_month_param,
    complete_months,
    from_date,
    month_label,
    months_in_range,
    to_date,
)

# UTC-10 .. UTC+13, half and three-quarter hours, both hemispheres' DST.
TYPING_ZONES = [
    "UTC",
    "Europe/Zurich",
    "Europe/Stockholm",
    "Europe/London",
    "America/New_York",
    "America/Los_Angeles",
    "America/St_Johns",
    "America/Sao_Paulo",
    "Pacific/Honolulu",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Australia/Adelaide",
    "Pacific/Auckland",
    "Pacific/Tongatapu",
    "Etc/GMT+10",
    "Etc/GMT-13",
]
BILLING_ZONES = ["Europe/Zurich", "Europe/Stockholm", "America/New_York", "Pacific/Auckland"]
# (from, to) as typed -> months meant; the ends and starts of months, DST days (EU: 2026-03-29
# and 2026-10-25; US: 2026-03-08 and 2026-11-01; NZ: 2026-04-05 and 2026-09-27)
RANGES = [
    ("2026-08-01", "2026-10-31", ["2026-08", "2026-09", "2026-10"]),
    ("2026-01-01", "2026-03-31", ["2026-01", "2026-02", "2026-03"]),
    ("2026-10-01", "2026-10-31", ["2026-10"]),
    ("2026-10-01", "2026-10-01", ["2026-10"]),
    ("2026-03-01", "2026-03-29", ["2026-03"]),
    ("2026-10-25", "2026-11-01", ["2026-11"]),
    ("2026-03-08", "2026-04-05", ["2026-04"]),
    ("2026-09-27", "2026-10-25", ["2026-10"]),
    ("2026-08-02", "2026-08-31", []),
    ("2025-12-31", "2026-02-28", ["2026-01", "2026-02"]),
]


def _day(text: str) -> date:
    return date.fromisoformat(text)


def _ui_bounds(first: str, last: str, zone: str) -> tuple[datetime, datetime]:
    """What the UI's backfill form sends: start of the From date and end of the To date in the
    UI's timezone (dayjs startOf/endOf('day'))."""
    tz = ZoneInfo(zone)
    start = datetime.combine(_day(first), datetime.min.time(), tz)
    end = datetime.combine(_day(last), datetime.max.time().replace(microsecond=999000), tz)
    return start, end


def _cli_bounds(first: str, last: str, zone: str) -> tuple[datetime, datetime]:
    """What `airflow backfill create --from-date D --to-date D` passes: midnights in
    [core] default_timezone."""
    tz = ZoneInfo(zone)
    return (
        datetime.combine(_day(first), datetime.min.time(), tz),
        datetime.combine(_day(last), datetime.min.time(), tz),
    )


def _backfilled_months(timetable, earliest: datetime, latest: datetime) -> list[str]:
    """The months Airflow's backfill creates: SerializedDAG.iter_dagrun_infos_between's loop."""
    restriction = TimeRestriction(
        pendulum.instance(earliest), pendulum.instance(latest), catchup=True
    )
    months, info = [], None
    while info := timetable.next_dagrun_info(
        last_automated_data_interval=info and info.data_interval, restriction=restriction
    ):
        months.append(str(timetable.billing_month(info.data_interval)))
    return months


@pytest.mark.parametrize("billing_zone", BILLING_ZONES)
@pytest.mark.parametrize("typing_zone", TYPING_ZONES)
def test_ui_range_bills_the_months_meant_in_any_ui_timezone(typing_zone, billing_zone):
    timetable = BillingMonthTimetable(billing_zone)
    for first, last, meant in RANGES:
        bounds = _ui_bounds(first, last, typing_zone)
        assert _backfilled_months(timetable, *bounds) == meant, (first, last)


@pytest.mark.parametrize("billing_zone", BILLING_ZONES)
@pytest.mark.parametrize("typing_zone", TYPING_ZONES)
def test_cli_range_bills_the_months_meant_in_any_default_timezone(typing_zone, billing_zone):
    timetable = BillingMonthTimetable(billing_zone)
    for first, last, meant in RANGES:
        bounds = _cli_bounds(first, last, typing_zone)
        assert _backfilled_months(timetable, *bounds) == meant, (first, last)


def test_airflows_own_rule_billed_the_wrong_months_from_a_utc_browser():
    """The trap this timetable removes, kept as the reason for it."""
    bounds = _ui_bounds("2026-08-01", "2026-10-31", "UTC")
    plain = CronDataIntervalTimetable("0 0 1 * *", "Europe/Zurich")
    months = [
        f"{info.data_interval.start.in_timezone('Europe/Zurich'):%Y-%m}"
        for info in _infos(plain, *bounds)
    ]
    assert months == ["2026-09", "2026-10", "2026-11"]
    assert _backfilled_months(BillingMonthTimetable("Europe/Zurich"), *bounds) == [
        "2026-08",
        "2026-09",
        "2026-10",
    ]


def _infos(timetable, earliest: datetime, latest: datetime) -> list:
    restriction = TimeRestriction(
        pendulum.instance(earliest), pendulum.instance(latest), catchup=True
    )
    infos, info = [], None
    while info := timetable.next_dagrun_info(
        last_automated_data_interval=info and info.data_interval, restriction=restriction
    ):
        infos.append(info)
    return infos


@pytest.mark.parametrize(
    ("typed", "zone", "as_from", "as_to"),
    [
        # a time typed near midnight is that midnight: From starts the next day, To ends this one
        ("2026-10-31T23:59", "UTC", "2026-11-01", "2026-10-31"),
        ("2026-10-31T23:55", "Pacific/Honolulu", "2026-11-01", "2026-10-31"),
        ("2026-11-01T00:05", "Europe/Zurich", "2026-11-01", "2026-11-01"),
        # REST bounds without a time (UTC midnights) and with seconds only
        ("2026-11-01T00:00", "UTC", "2026-11-01", "2026-11-01"),
        ("2026-10-31T23:59:59", "Etc/GMT-13", "2026-11-01", "2026-10-31"),
        # UTC+13 at midnight is 11:00 UTC the day before: still its own date
        ("2026-11-01T00:00", "Pacific/Auckland", "2026-11-01", "2026-11-01"),
    ],
)
def test_typed_bound_reads_back_the_date(typed, zone, as_from, as_to):
    instant = datetime.fromisoformat(typed).replace(tzinfo=ZoneInfo(zone))
    assert from_date(instant) == _day(as_from)
    assert to_date(instant) == _day(as_to)


def test_utc_minus_eleven_reads_as_the_next_day_the_documented_limit():
    """UTC-11's midnights are UTC+13's: read as the later date (README)."""
    midnight = datetime(2026, 8, 1, tzinfo=ZoneInfo("Pacific/Pago_Pago"))
    assert from_date(midnight) == date(2026, 8, 2)


def test_months_in_range_is_the_first_of_month_rule():
    assert months_in_range(date(2026, 8, 1), date(2026, 10, 31)) == [
        BillingMonth(2026, 8),
        BillingMonth(2026, 9),
        BillingMonth(2026, 10),
    ]
    assert months_in_range(date(2026, 8, 2), date(2026, 9, 1)) == [BillingMonth(2026, 9)]
    assert months_in_range(date(2026, 8, 2), date(2026, 8, 31)) == []
    assert months_in_range(date(2026, 12, 1), date(2027, 1, 1)) == [
        BillingMonth(2026, 12),
        BillingMonth(2027, 1),
    ]


@pytest.mark.parametrize("zone", TYPING_ZONES)
def test_pure_rule_and_timetable_agree(zone):
    timetable = BillingMonthTimetable("Europe/Zurich")
    for first, last, _ in RANGES:
        bounds = _ui_bounds(first, last, zone)
        rule = months_in_range(from_date(bounds[0]), to_date(bounds[1]))
        assert [str(m) for m in rule] == _backfilled_months(timetable, *bounds)


def test_scheduler_start_date_and_catchup_are_unchanged():
    """The scheduler's restriction (start_date, no end, catchup off) gives Airflow's interval."""
    zone = "Europe/Stockholm"
    start = pendulum.datetime(2026, 1, 1, tz=zone)
    ours, plain = BillingMonthTimetable(zone), CronDataIntervalTimetable("0 0 1 * *", zone)
    for catchup in (False, True):
        restriction = TimeRestriction(start, None, catchup=catchup)
        for last in (None, DataInterval(start, pendulum.datetime(2026, 2, 1, tz=zone))):
            kwargs = {"last_automated_data_interval": last, "restriction": restriction}
            assert ours.next_dagrun_info(**kwargs) == plain.next_dagrun_info(**kwargs)


def test_serializes_to_its_timezone_and_back():
    timetable = BillingMonthTimetable("Europe/Zurich")
    assert timetable.serialize() == {"timezone": "Europe/Zurich"}
    again = BillingMonthTimetable.deserialize(timetable.serialize())
    assert again.billing_timezone == "Europe/Zurich"
    assert again.summary == "Monthly (billing months, Europe/Zurich)"


def test_scheduled_and_backfill_run_ids_name_the_month():
    timetable = BillingMonthTimetable("Europe/Zurich")
    interval = DataInterval(
        pendulum.datetime(2026, 10, 1, tz="Europe/Zurich"),
        pendulum.datetime(2026, 11, 1, tz="Europe/Zurich"),
    )
    run_after = interval.end.in_timezone("UTC")
    for run_type in (DagRunType.SCHEDULED, DagRunType.BACKFILL_JOB):
        run_id = timetable.generate_run_id(
            run_type=run_type, run_after=run_after, data_interval=interval
        )
        assert run_id == f"{run_type.value}__2026-10__2026-10-31T23:00:00+00:00"
    manual = timetable.generate_run_id(
        run_type=DagRunType.MANUAL, run_after=run_after, data_interval=interval
    )
    assert manual == "manual__2026-10-31T23:00:00+00:00"


def test_run_ids_match_airflows_default_allowed_pattern():
    import re

    from airflow.configuration import conf

    pattern = conf.get("scheduler", "allowed_run_id_pattern")
    timetable = BillingMonthTimetable("Europe/Zurich")
    interval = DataInterval(
        pendulum.datetime(2026, 1, 1, tz="Europe/Zurich"),
        pendulum.datetime(2026, 2, 1, tz="Europe/Zurich"),
    )
    run_id = timetable.generate_run_id(
        run_type=DagRunType.SCHEDULED, run_after=interval.end, data_interval=interval
    )
    assert re.match(pattern, run_id)


def test_complete_months_are_the_months_over_in_the_billing_timezone():
    first = BillingMonth(2026, 1)
    # 2026-12-01 00:30 in Zurich is still November in UTC: November is over in Zurich
    now = datetime(2026, 11, 30, 23, 30, tzinfo=ZoneInfo("UTC"))
    months = complete_months(first, "Europe/Zurich", now)
    assert months[0] == BillingMonth(2026, 11) and months[-1] == first and len(months) == 11
    assert complete_months(first, "UTC", now)[0] == BillingMonth(2026, 10)
    assert complete_months(first, "UTC", datetime(2026, 1, 15, tzinfo=ZoneInfo("UTC"))) == []


def test_month_param_is_a_list_of_months_with_words():
    param = billing_month_param(BillingMonth(2026, 1), "Europe/Zurich")
    enum = param.schema["enum"]
    assert enum[0] is None and "2026-01" in enum
    assert param.schema["values_display"]["2026-01"] == "2026-01 (January 2026)"
    assert "data interval" in param.schema["values_display"]["null"]
    assert param.resolve(None) is None
    assert param.resolve("2026-01") == "2026-01"
    with pytest.raises(ValueError, match="is not one of"):
        param.resolve("2026-13")
    assert month_label(BillingMonth(2026, 10)) == "2026-10 (October 2026)"


def test_a_whole_day_of_ui_bounds_reads_one_date():
    """Every quarter-hour offset from UTC-10:45 to UTC+13 reads the same From date."""
    for quarters in range(-43, 53):
        tz = pendulum.FixedTimezone(quarters * 15 * 60)
        start = datetime(2026, 8, 1, tzinfo=tz)
        assert from_date(start) == date(2026, 8, 1), quarters
        assert to_date(start + timedelta(days=1) - timedelta(milliseconds=1)) == date(2026, 8, 1)
