"""The monthly DAG's timetable: one run per billing month, and date ranges read as a person
means them.

Airflow backfills the runs whose logical date (here: midnight of the 1st, billing timezone)
lies within [from, to]. The bounds arrive as instants: the UI sends midnight (From) and
23:59:59.999 (To) of the typed dates in the *UI's* timezone, the CLI midnight in
[core] default_timezone. Compared with the billing timezone's midnights, "2026-08-01 to
2026-10-31" typed in a UTC browser billed September to November. Here each bound is first read
back as the calendar date that was typed (`typed_date`), then the rule is Airflow's own for
monthly logical dates: a month is billed when its 1st lies within [from date, to date].
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import pendulum
from airflow.sdk import Param
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable
from airflow.utils.types import DagRunType
from pendulum import DateTime

from cdr_billing.months import BillingMonth

MONTHLY = "0 0 1 * *"
UTC = ZoneInfo("UTC")
DATA_INTERVAL_MONTH = "The month of the run's data interval"
QUARTER_HOUR = timedelta(minutes=15)
# The typing timezones a bound is read in: UTC-10:45 .. UTC+13 (24 hours, so every instant is a
# midnight in exactly one of them, to the quarter hour). This keeps Hawaii (-10) and New
# Zealand's summer, Tonga and Samoa (+13); it gives up UTC-11 (American Samoa, Niue), UTC-12
# (uninhabited) and UTC+14 (Line Islands), whose midnights are another zone's.
EASTMOST_OFFSET = timedelta(hours=13)


class TypedBound(NamedTuple):
    """A bound read back as typed: the date whose midnight it rounds to, and whether it lies
    before that midnight (the UI's To: the end of the day before)."""

    day: date
    before_midnight: bool


def typed_bound(instant: datetime) -> TypedBound:
    """The date an instant was typed as: rounded to the quarter hour, it is midnight in exactly
    one offset of UTC-10:45..UTC+13; that midnight's date."""
    utc = instant.astimezone(UTC)
    rounded = _round_to_quarter_hour(utc)
    midnight = (rounded + EASTMOST_OFFSET).replace(hour=0, minute=0, second=0, microsecond=0)
    return TypedBound(midnight.date(), utc < rounded)


def _round_to_quarter_hour(utc: datetime) -> datetime:
    floor = utc.replace(minute=utc.minute - utc.minute % 15, second=0, microsecond=0)
    return floor + QUARTER_HOUR if utc - floor >= QUARTER_HOUR / 2 else floor


def from_date(instant: datetime) -> date:
    """The first date a From bound includes: the date typed."""
    return typed_bound(instant).day


def to_date(instant: datetime) -> date:
    """The last date a To bound includes: the date typed (the UI's 23:59:59.999 of that date
    rounds to the next midnight and lies before it)."""
    bound = typed_bound(instant)
    return bound.day - timedelta(days=1) if bound.before_midnight else bound.day


def months_in_range(first: date, last: date) -> list[BillingMonth]:
    """The months whose 1st lies within [first, last]: the ones a range bills."""
    month = BillingMonth(first.year, first.month)
    if first.day > 1:
        month = month.next()
    months = []
    while date(month.year, month.month, 1) <= last:
        months.append(month)
        month = month.next()
    return months


def complete_months(start: BillingMonth, timezone: str, now: datetime) -> list[BillingMonth]:
    """The months from start to the last month that is over in the billing timezone, newest
    first: the months a run can bill."""
    local = now.astimezone(ZoneInfo(timezone))
    current = BillingMonth(local.year, local.month)
    months = []
    month = start
    while month < current:
        months.append(month)
        month = month.next()
    return months[::-1]


class BillingMonthTimetable(CronDataIntervalTimetable):
    """Monthly data intervals from midnight of the 1st in the billing timezone; backfill
    ranges read as typed (module docstring); scheduled runs named by their month."""

    def __init__(self, timezone: str) -> None:
        super().__init__(MONTHLY, timezone)
        self.billing_timezone = timezone

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> BillingMonthTimetable:
        return cls(data["timezone"])

    def serialize(self) -> dict[str, Any]:
        return {"timezone": self.billing_timezone}

    @property
    def summary(self) -> str:
        return f"Monthly (billing months, {self.billing_timezone})"

    def next_dagrun_info(
        self,
        *,
        last_automated_data_interval: DataInterval | None,
        restriction: TimeRestriction,
    ) -> DagRunInfo | None:
        """Airflow's next interval, within the dates typed (the scheduler's start_date, a
        backfill's range)."""
        return super().next_dagrun_info(
            last_automated_data_interval=last_automated_data_interval,
            restriction=self.typed_restriction(restriction),
        )

    def typed_restriction(self, restriction: TimeRestriction) -> TimeRestriction:
        """The restriction with its bounds moved to midnight of the dates typed, in the billing
        timezone, so that Airflow's [earliest, latest] test is the months-in-range rule."""
        earliest, latest = restriction.earliest, restriction.latest
        return TimeRestriction(
            earliest if earliest is None else self._midnight(from_date(earliest)),
            latest if latest is None else self._midnight(to_date(latest)),
            restriction.catchup,
        )

    def _midnight(self, day: date) -> DateTime:
        return pendulum.datetime(day.year, day.month, day.day, tz=self._timezone)

    def billing_month(self, data_interval: DataInterval) -> BillingMonth:
        """The month a data interval bills: its start in the billing timezone."""
        local = data_interval.start.astimezone(ZoneInfo(self.billing_timezone))
        return BillingMonth(local.year, local.month)

    def generate_run_id(
        self,
        *,
        run_type: DagRunType,
        run_after: DateTime,
        data_interval: DataInterval | None,
        **extra: Any,
    ) -> str:
        """scheduled__2026-10__<run after>: scheduled (and backfill) runs say their month.
        Manual runs keep Airflow's id: their month may come from the billing_month param."""
        if data_interval is None or run_type not in (DagRunType.SCHEDULED, DagRunType.BACKFILL_JOB):
            return super().generate_run_id(
                run_type=run_type, run_after=run_after, data_interval=data_interval, **extra
            )
        month = self.billing_month(data_interval)
        return run_type.generate_run_id(suffix=f"{month}__{run_after.isoformat()}")


def month_label(month: BillingMonth) -> str:
    """2026-10 (October 2026)."""
    return f"{month} ({date(month.year, month.month, 1):%B %Y})"


def billing_month_param(first: BillingMonth, timezone: str) -> Param:
    """The trigger form's month: a list of the months a run can bill (from the DAG's first
    month to the last one over), so a bad month cannot be typed; empty bills the month of the
    run's data interval. Computed when the DAG is parsed: a new DAG version once a month."""
    months = complete_months(first, timezone, datetime.now(UTC))
    return Param(
        None,
        type=["null", "string"],
        enum=[None, *(str(month) for month in months)],
        values_display={"null": DATA_INTERVAL_MONTH, **{str(m): month_label(m) for m in months}},
        title="Billing month",
        description=f"Pick a month from {first} to the last month that is over, or leave it "
        "empty to bill the month of the run's data interval.",
    )
