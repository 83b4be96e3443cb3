"""The billing month: which calendar month a run bills, and its boundaries."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


class MonthBounds(NamedTuple):
    """A month as [start, end): its first moment and the first moment of the next month."""

    start: datetime
    end: datetime


@dataclass(frozen=True, order=True)
class BillingMonth:
    """A calendar month, written YYYY-MM."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> BillingMonth:
        """Parse "YYYY-MM"; raise ValueError on anything else."""
        match = _MONTH.match(text.strip())
        if not match:
            raise ValueError(f"billing month must be YYYY-MM, got {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def next(self) -> BillingMonth:
        """Return the following month."""
        return BillingMonth(self.year + self.month // 12, self.month % 12 + 1)

    def bounds(self, timezone: str) -> MonthBounds:
        """Return [start, end) of the month as aware datetimes in the given zone."""
        zone = ZoneInfo(timezone)
        following = self.next()
        return MonthBounds(
            datetime(self.year, self.month, 1, tzinfo=zone),
            datetime(following.year, following.month, 1, tzinfo=zone),
        )


def resolve_billing_month(
    param: str | None, data_interval_start: datetime | None, timezone: str
) -> BillingMonth:
    """Pick the month a run bills: the `billing_month` param, else its data interval start."""
    if param:
        return BillingMonth.parse(param)
    if data_interval_start is None:
        raise ValueError("the run has no data interval: pass billing_month (YYYY-MM)")
    local = data_interval_start.astimezone(ZoneInfo(timezone))
    return BillingMonth(local.year, local.month)


def run_month(param: object, data_interval_start: datetime | None, timezone: str) -> str | None:
    """The month a run bills, as its tasks resolve it (resolve_billing_month), for what shows
    it around the run (notes, logs, records, pages); None when they cannot: no month param and
    no data interval, or a param that is no month."""
    try:
        month = param if isinstance(param, str) else None
        return str(resolve_billing_month(month, data_interval_start, timezone))
    except (ValueError, TypeError):
        return None


def context_month(context: Mapping[str, Any], timezone: str) -> str | None:
    """run_month of a running task, from its context (what run.start_run is given)."""
    params = context.get("params") or {}
    return run_month(params.get("billing_month"), context.get("data_interval_start"), timezone)
