"""The drill-down's month, shared by its in-process tests (test_drill_down.py) and its browser
test (test_drill_down_browser.py): 2026-09 loaded with the pipeline's own load (load_month,
rows_not_billed) into a billing database. Users include a phone-number id and ids with '/' and
spaces; the calls come from two CDR files; suspense and unbillable groups of several sizes.
The expected figures are computed from these frames, never from the app's queries."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pandas as pd
from billing_seed import batch_of
from sqlalchemy.engine import Engine

from cdr_billing import not_billed
from cdr_billing.load import load_month
from cdr_billing.money import from_minor_units

MONTH = "2026-09"
PHONE = "+46701234567"  # a user id that is a phone number
PHONE_MASKED = "+4670*****67"
SLASHED = "alice/ops team"  # reserved characters in ids
ODD_CUSTOMER = "C 2/x"
SUSPENSE_PHONE = "+46709999999"
SUSPENSE_MASKED = "+4670*****99"
# (customer, sequence number, currency, user, calls)
USERS = [
    ("C1", "1001", "EUR", PHONE, 250),
    ("C1", "1001", "EUR", SLASHED, 7),
    ("C1", "1001", "EUR", "bob", 3),
    ("C1", "1002", "SEK", "bob", 4),
    (ODD_CUSTOMER, "9/1", "EUR", "carol", 2),
]
FILES = ("carrier_cdr_20260901.csv", "carrier_cdr_20260915.csv")
# (kind, reason, key field, key, calls)
NOT_BILLED = [
    ("unbillable", "NO_TARIFF_PREFIX", "number_range", "+8821", 30),
    ("unbillable", "NO_RATE_AT_CALL_TIME", "number_range", "+4412", 5),
    ("suspense", "UNKNOWN_ACCOUNT", "user_id", SUSPENSE_PHONE, 120),
    ("suspense", "NOT_ENTITLED", "user_id", "ghost", 3),
    ("suspense", "UNKNOWN_ACCOUNT", "user_id", "", 2),  # no account: an empty key
]
LINE_KEYS = ["customer_id", "sequence_number", "currency"]


class DrillMonth(NamedTuple):
    """What was loaded: every billed call, and the rows not billed per kind."""

    calls: pd.DataFrame
    not_billed: dict[str, pd.DataFrame]


def billed_calls() -> pd.DataFrame:
    """Every billed call; each user's calls alternate between the two files."""
    rows, row_of = [], dict.fromkeys(FILES, 0)
    start = datetime(2026, 9, 1, 8, tzinfo=UTC)
    for customer, sequence, currency, user, calls in USERS:
        for n in range(calls):
            source_file = FILES[n % 2]
            row_of[source_file] += 1
            rows.append(
                {
                    "customer_id": customer,
                    "sequence_number": sequence,
                    "currency": currency,
                    "user_id": user,
                    "transaction_id": f"t-{len(rows)}",
                    "start_utc": start + timedelta(minutes=len(rows)),
                    "billed_seconds": 7 + (len(rows) * 37) % 400,
                    "cost_minor": 1 + (len(rows) * 13) % 250,
                    "pricing": "tariff",
                    "source": "carrier",
                    "source_file": source_file,
                    "source_row": row_of[source_file],
                    "combined_rows": "12,13" if n == 1 else "",
                }
            )
    calls = pd.DataFrame(rows)
    calls["start_utc"] = pd.to_datetime(calls["start_utc"], utc=True)
    return calls


def sums(calls: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Cost, calls and seconds per group of calls, as the aggregation writes lines."""
    return (
        calls.groupby(keys, sort=True)
        .agg(
            total_minor=("cost_minor", "sum"),
            call_count=("cost_minor", "size"),
            billed_seconds=("billed_seconds", "sum"),
        )
        .reset_index()
    )


def not_billed_frames() -> dict[str, pd.DataFrame]:
    """The stage files' rows of the kinds not billed, as the rating and attribution write them."""
    frames: dict[str, list[dict]] = {"unbillable": [], "suspense": []}
    for kind, reason, field, key, calls in NOT_BILLED:
        for n in range(calls):
            row = {
                "reason_code": reason,
                "source_file": FILES[n % 2],
                "source_row": 10_000 + len(frames[kind]),
                "transaction_id": f"{kind}-{len(frames[kind])}",
                "user_id": "acct-1",
                "number_range": "+4670",
                "session_id": "",
                "duration_seconds": 1 + (n * 97) % 700,
            }
            frames[kind].append({**row, field: key})
    return {kind: pd.DataFrame(rows) for kind, rows in frames.items()}


def seed(engine: Engine, run_id: str = "drill_run_1") -> DrillMonth:
    """Load the month as the pipeline's load does (its batch current); return what it holds."""
    calls = billed_calls()
    frames = not_billed_frames()
    duplicate = pd.DataFrame(
        [{"source_file": FILES[0], "source_row": 99, "transaction_id": "t-1", "user_id": "x"}]
    )
    empty = pd.DataFrame()
    exceptions = not_billed.rows_not_billed(
        lambda name: {**frames, "duplicates": duplicate}.get(name, empty)
    )
    batch = replace(
        batch_of(sums(calls, LINE_KEYS), exceptions),  # no revenue shares
        user_lines=sums(calls, [*LINE_KEYS, "user_id"]),
        billed_calls=[calls[calls["source_file"] == name] for name in FILES],
    )
    load_month(engine, MONTH, run_id, batch, {"read": len(calls)})
    return DrillMonth(calls, frames)


def minutes(seconds: int) -> str:
    """Minutes to a tenth, half up (the documented rule), with thousands separators: in whole
    tenths, (seconds x 10 + 30) // 60."""
    tenths = (seconds * 10 + 30) // 60
    return f"{tenths // 10:,}.{tenths % 10}"


def money(minor: int, currency: str) -> str:
    return f"{from_minor_units(minor, currency):,} {currency}"
