"""An independent, row-by-row reference computation of a month's billing lines.

Deliberately different from the pipeline: csv and openpyxl instead of pandas and
fastexcel, Decimal per call instead of integer vectors, loops instead of joins. The
end-to-end tests compare the pipeline's loaded lines with this.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

CENT = Decimal("0.01")
ZONE = ZoneInfo("Europe/Stockholm")


class _MonthBounds(NamedTuple):
    """A month as [start, end) in the billing zone."""

    start: datetime
    end: datetime


def _month_bounds(year: int, month: int) -> _MonthBounds:
    following = (year + month // 12, month % 12 + 1)
    return _MonthBounds(datetime(year, month, 1, tzinfo=ZONE), datetime(*following, 1, tzinfo=ZONE))


def _carrier_calls(path: Path, start: datetime, end: datetime) -> list[dict]:
    calls = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                started = datetime.fromisoformat(row["start_of_usage"])
                duration = int(row["duration_of_usage"])
            except ValueError:
                continue
            if (
                not (start <= started < end)
                or not 0 <= duration <= 86400
                or row["completion_status"] not in "0123"
            ):
                continue
            if not re.fullmatch(r"\+?[0-9]{4,17}", row["destination_party"]):
                continue
            calls.append(
                {
                    "key": ("carrier", row["transaction_id"]),
                    "account": row["user_id"],
                    "status": row["completion_status"],
                    "duration": duration,
                    "number": row["destination_party"],
                    "session": row["session_id"],
                    "start": started,
                    "part": row["transaction_part_number"],
                    "provider": row["service_provider"],
                    "share": row["revenue_share_percentage"],
                }
            )
    return calls


PBX_STATUS = {"ANSWERED": "1", "NO ANSWER": "0", "BUSY": "0", "FAILED": "0"}


def _pbx_calls(path: Path, start: datetime, end: datetime) -> list[dict]:
    calls = []
    with path.open(newline="", encoding="latin-1") as handle:
        for row in csv.DictReader(handle, delimiter=";"):
            match = re.fullmatch(r"(\d+):([0-5]\d):([0-5]\d)", row["Längd"])
            started = datetime.strptime(row["Starttid"], "%d.%m.%Y %H:%M:%S").replace(tzinfo=ZONE)
            if not match or not start <= started < end or not _exists(started):
                continue
            hours, minutes, seconds = (int(g) for g in match.groups())
            calls.append(
                {
                    "key": ("pbx", row["Samtals-ID"]),
                    "account": row["Anknytning"],
                    "status": PBX_STATUS[row["Status"]],
                    "duration": hours * 3600 + minutes * 60 + seconds,
                    "number": row["Uppringt nummer"],
                }
            )
    return calls


def _exists(wall: datetime) -> bool:
    """Whether a local wall time occurs at all: one the spring clock change skips is quarantined."""
    return wall.astimezone(UTC).astimezone(ZONE).replace(tzinfo=None) == wall.replace(tzinfo=None)


def _conferencing_calls(path: Path) -> list[dict]:
    from openpyxl import load_workbook

    sheet = load_workbook(path, read_only=True).active
    rows = sheet.iter_rows(values_only=True)
    header = next(row for row in rows if row and row[0] == "Conference ID")
    calls = []
    for values in rows:
        row = dict(zip(header, values, strict=False))
        if not _exists(row["Start Time"].replace(tzinfo=ZONE)):
            continue
        cost = Decimal(repr(row["Cost"])).quantize(CENT, rounding=ROUND_HALF_UP)
        calls.append(
            {
                "key": ("conferencing", row["Leg ID"]),
                "account": str(row["PGIConnect ID"]),
                "status": "1",
                "cost": cost,
            }
        )
    return calls


def _normalise(number: str) -> str:
    if number.startswith("+"):
        return number[1:]
    if number.startswith("00"):
        return number[2:]
    return "46" + number[1:] if number.startswith("0") else number


def _tariff_cost(number: str, duration: int, tariff: list[dict]) -> Decimal | None:
    digits = _normalise(number)
    matches = [t for t in tariff if digits.startswith(t["prefix"])]
    if not matches:
        return None
    rate = max(matches, key=lambda t: len(t["prefix"]))
    first, following = int(rate["first_increment"]), int(rate["next_increment"])
    billed = (
        0
        if duration == 0
        else first
        + int((Decimal(max(duration - first, 0)) / following).to_integral_value(ROUND_CEILING))
        * following
    )
    cost = Decimal(rate["connection_fee"]) + Decimal(rate["price_per_minute"]) * billed / 60
    return max(cost, Decimal(rate["minimum_charge"])).quantize(CENT, rounding=ROUND_HALF_UP)


def _combine_partials(calls: list[dict]) -> list[dict]:
    """Parts (status 2) of one session become one call with the summed duration."""
    sessions = defaultdict(list)
    for call in calls:
        if call["status"] == "2" and call.get("session"):
            sessions[call["session"]].append(call)
    merged = []
    for call in calls:
        parts = sessions.get(call.get("session")) if call["status"] == "2" else None
        if not parts:
            merged.append(call)
        elif call is min(parts, key=lambda p: (p["start"], p["part"])):
            merged.append({**call, "duration": sum(p["duration"] for p in parts)})
    return merged


def expected_lines(
    sftp_root: Path,
    year: int,
    month: int,
    extra_rates: tuple[dict, ...] = (),
    prepaid: frozenset[str] = frozenset(),
) -> dict[tuple[str, str], Decimal]:
    """Return {(customer id, sequence number): total} for the sample month under sftp_root,
    priced with its tariff file plus `extra_rates` (rows added to the tariff later); the calls
    of the `prepaid` accounts are debited to their balances, not billed."""
    totals = defaultdict(Decimal)
    for account, _, cost in _billed_calls(sftp_root, year, month, extra_rates, prepaid):
        totals[
            (
                account["customer_id"],
                account["sequence_number"] or account["default_sequence_number"],
            )
        ] += cost
    return dict(totals)


def expected_revenue_share(
    sftp_root: Path, year: int, month: int, prepaid: frozenset[str] = frozenset()
) -> dict[tuple[str, Decimal], tuple[Decimal, Decimal]]:
    """Return {(service provider, share percent): (billed, share)} over the billed calls that
    carry a share."""
    billed = defaultdict(Decimal)
    for _, call, cost in _billed_calls(sftp_root, year, month, prepaid=prepaid):
        if call.get("share"):
            billed[(call["provider"], Decimal(call["share"]))] += cost
    return {
        key: (total, (total * key[1] / 100).quantize(CENT, rounding=ROUND_HALF_UP))
        for key, total in billed.items()
    }


class PrepaidCall(NamedTuple):
    """A prepaid account's priced call: debited to the account's balance, not billed."""

    account: str
    cost: Decimal


def expected_prepaid(
    sftp_root: Path,
    year: int,
    month: int,
    prepaid: frozenset[str],
    extra_rates: tuple[dict, ...] = (),
) -> dict[str, PrepaidCall]:
    """Return {"source:transaction id": (account, cost)} of the month's priced calls of the
    `prepaid` accounts (entitled or not: a prepaid account pays its own calls)."""
    return {
        f"{call['key'][0]}:{call['key'][1]}": PrepaidCall(call["account"], cost)
        for call, cost in _priced_calls(sftp_root, year, month, extra_rates)
        if call["account"] in prepaid
    }


def _billed_calls(
    sftp_root: Path,
    year: int,
    month: int,
    extra_rates: tuple[dict, ...] = (),
    prepaid: frozenset[str] = frozenset(),
) -> list[tuple[dict, dict, Decimal]]:
    """(account, call, cost) of every billed call of the month: priced, of an entitled account
    that is not prepaid."""
    with sorted((sftp_root / "reference").glob("entitlements_*.csv"))[-1].open(
        newline=""
    ) as handle:
        accounts = {row["account_id"]: row for row in csv.DictReader(handle)}
    billed = []
    for call, cost in _priced_calls(sftp_root, year, month, extra_rates):
        account = accounts.get(call["account"])
        if call["account"] in prepaid or account is None or account["entitled"] != "true":
            continue
        billed.append((account, call, cost))
    return billed


def _priced_calls(
    sftp_root: Path, year: int, month: int, extra_rates: tuple[dict, ...] = ()
) -> list[tuple[dict, Decimal]]:
    """(call, cost) of every call of the month that completed and has a price."""
    start, end = _month_bounds(year, month)
    calls = _carrier_calls(sftp_root / f"cdr/carrier/carrier_cdr_{year}{month:02d}.csv", start, end)
    calls += _conferencing_calls(
        sftp_root / f"cdr/conferencing/conferencing_cdr_{year}-{month:02d}.xlsx"
    )
    calls += _pbx_calls(sftp_root / f"cdr/pbx/pbx_cdr_{year}-{month:02d}.csv", start, end)
    with sorted((sftp_root / "reference").glob("tariff*.csv"))[-1].open(newline="") as handle:
        tariff = list(csv.DictReader(handle)) + list(extra_rates)
    seen, unique = set(), []
    for call in calls:
        if call["key"] not in seen:
            seen.add(call["key"])
            unique.append(call)
    priced = []
    for call in _combine_partials(unique):
        if call["status"] == "0":
            continue
        cost = call.get("cost")
        if cost is None:
            cost = _tariff_cost(call["number"], call["duration"], tariff)
        if cost is not None:
            priced.append((call, cost))
    return priced


def first_day_after(year: int, month: int) -> datetime:
    """The logical date of a manual run that bills (year, month) by its data interval."""
    return _month_bounds(year, month).end + timedelta(hours=1)
