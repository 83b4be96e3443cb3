"""A tiny billed month with statements, built without the DAG, for the statement tests; and an
oracle that sums statement calls with plain Decimal, row by row, apart from the engine."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pandas as pd

from cdr_billing import load, statements
from cdr_billing.config import CustomerStatements, StatementSettings

FULL_NUMBERS = ["+46701234567", "+4420794561", "+46851234111"]
SETTINGS = StatementSettings(
    customers={
        "C1": CustomerStatements(mask_digits=3, deliver="pdf"),
        "C2": CustomerStatements(mask_digits=0, deliver="link"),
    },
    portal_url="https://portal.example.test",
    retry_minutes=1,
    max_attempts=3,
)


def priced_calls() -> pd.DataFrame:
    """Attributed calls as the bill task has them (with the statement detail columns)."""
    rows = [
        ("C1", "101", "EUR", "u1", "2026-05-03 08:00", FULL_NUMBERS[0], 61, 120, 37, 1, 3),
        ("C1", "102", "EUR", "u1", "2026-05-01 22:30", FULL_NUMBERS[1], 30, 60, 155, 1, 5),
        ("C1", "101", "EUR", "u2", "2026-05-09 12:00", FULL_NUMBERS[2], 5, 60, 12, 1, 4),
        ("C2", "201", "EUR", "u3", "2026-05-10 12:00", FULL_NUMBERS[0], 100, 100, 250, 0, 0),
        ("C3", "301", "EUR", "u4", "2026-05-11 12:00", FULL_NUMBERS[0], 9, 60, 7, 1, 3),
    ]
    frame = pd.DataFrame(
        rows,
        columns=[
            "customer_id",
            "sequence_number",
            "currency",
            "user_id",
            "start_utc",
            "destination_party",
            "duration_seconds",
            "billed_seconds",
            "cost_minor",
            "tariff_version",
            "tariff_line",
        ],
    )
    return frame.assign(
        start_utc=pd.to_datetime(frame["start_utc"], utc=True),
        destination_e164=frame["destination_party"]
        .str.lstrip("+")
        .where(frame["tariff_version"] > 0, ""),
        source_file="f.csv",
        source_row=range(len(frame)),
    )


def user_lines(calls: pd.DataFrame) -> pd.DataFrame:
    """The user lines of the attributed calls (the aggregation's, summed with pandas)."""
    return (
        calls.groupby(["customer_id", "sequence_number", "currency", "user_id"])
        .agg(
            total_minor=("cost_minor", "sum"),
            call_count=("cost_minor", "size"),
            billed_seconds=("billed_seconds", "sum"),
        )
        .reset_index()
    )


def lines_of(users: pd.DataFrame) -> pd.DataFrame:
    return (
        users.groupby(["customer_id", "sequence_number", "currency"])[
            ["total_minor", "call_count", "billed_seconds"]
        ]
        .sum()
        .reset_index()
    )


def inputs(run_id: str, prepaid: dict | None = None) -> statements.StatementInputs:
    calls = priced_calls()
    return statements.StatementInputs(
        run_id=run_id,
        calls=statements.statement_calls(calls, SETTINGS, prepaid=False),
        user_lines=user_lines(calls),
        destinations={(1, 3): "Sweden mobile", (1, 4): "Sweden Stockholm", (1, 5): "UK London"},
        addresses={"u1": "u1@c1.example.test", "u2": "u2@c1.example.test", "u3": "u3@c2.test"},
        prepaid=prepaid or {},
        timezone="Europe/Stockholm",
        now=datetime(2026, 6, 1, tzinfo=UTC),
    )


def batch(run_id: str) -> load.Batch:
    """A Batch of the tiny month, its statements included."""
    calls = priced_calls()
    users = user_lines(calls)
    return load.Batch(
        lines=lines_of(users),
        user_lines=users,
        revenue_share=pd.DataFrame(
            columns=[
                "service_provider",
                "currency",
                "share_basis_points",
                "call_count",
                "billed_minor",
                "share_minor",
            ]
        ),
        billed_calls=[],
        exceptions=pd.DataFrame(
            columns=[
                "kind",
                "reason_code",
                "source_file",
                "source_row",
                "transaction_id",
                "detail",
            ]
        ),
        statements=statements.build_statements(inputs(run_id), SETTINGS),
    )


def oracle_totals(calls: list[dict], currency_digits: int = 2) -> dict[str, Decimal]:
    """Per statement, its calls' costs as Decimal amounts summed one row at a time."""
    totals: dict[str, Decimal] = {}
    unit = Decimal(1).scaleb(-currency_digits)
    for call in calls:
        amount = Decimal(int(call["cost_minor"])) * unit
        totals[call["statement_id"]] = totals.get(call["statement_id"], Decimal(0)) + amount
    return totals
