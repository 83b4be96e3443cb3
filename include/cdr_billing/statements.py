"""Itemised statements: per billed user, customer, currency and month, for the customers whose
config opts in (`statements:` in the pipeline config; docs/statements.md).

The bill task keeps each opted-in call as the file's part `statement_calls`, its called number
already masked by the customer's policy (`statement_calls`): the full number never reaches a
statement table. The load builds the statement frames from those parts (`build_statements`),
proves that the post-paid calls sum to the user lines to the cent (`check_statement_totals`,
raises StatementMismatch) and writes them in the batch's transaction, so a re-run supersedes
them with the batch. Prepaid accounts also get their ledger over the month, by posting time:
opening balance, debits, top-ups, adjustments and closing balance (`prepaid_periods`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from cdr_billing.aggregate import USER_KEYS
from cdr_billing.config import StatementSettings
from cdr_billing.privacy import mask_tail, shown_id
from cdr_billing.schema import (
    balance_entry,
    billing_batch,
    entitlement,
    month_entitlement,
    prepaid_account,
    statement,
    statement_call,
    statement_delivery,
    statement_document,
    statement_subtotal,
    tariff_rate,
)

STATEMENT_PART = "statement_calls"
# A call as a statement shows it; called_number_shown is masked by the customer's policy.
PART_COLUMNS = [
    "customer_id",
    "sequence_number",
    "currency",
    "user_id",
    "start_utc",
    "called_number_shown",
    "tariff_version",
    "tariff_line",
    "duration_seconds",
    "billed_seconds",
    "cost_minor",
    "prepaid",
    "source_file",
    "source_row",
]
# What the bill task's attributed calls must keep for the part (beside the lineage's columns).
CALL_DETAIL_COLUMNS = [
    "destination_party",
    "destination_e164",
    "duration_seconds",
    "tariff_version",
    "tariff_line",
]
STATEMENT_KEYS = ["customer_id", "user_id", "currency"]
PROVIDER_PRICED = "priced by the provider"
PREPAID_SEQUENCE = "prepaid"  # the sequence number a prepaid call is shown under
DESTINATION, SEQUENCE = "destination", "sequence"
PENDING = "pending"
DEBIT_KINDS, TOPUP_KINDS = ("debit", "reversal"), ("topup",)
ADJUSTMENT_KINDS = ("credit", "refund", "adjustment")


class StatementMismatch(ValueError):
    """The statements do not sum to the billing lines: nothing is loaded."""


def statement_id(run_id: str, customer_id: str, user_id: str, currency: str) -> str:
    """A statement's id: a hash of its run (one batch per run), customer, user and currency, so
    it is known before the batch's row exists and a URL never shows the user id."""
    key = "\x1f".join((run_id, customer_id, user_id, currency))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def called_numbers(calls: pd.DataFrame) -> pd.Series:
    """The called number of each call: E.164 with "+" where the tariff normalised it, else
    as the provider delivered it ("" for none)."""
    e164 = calls["destination_e164"].fillna("").astype(str)
    raw = calls["destination_party"].fillna("").astype(str)
    return ("+" + e164).where(e164 != "", raw)


def statement_calls(
    calls: pd.DataFrame, settings: StatementSettings, prepaid: bool
) -> pd.DataFrame:
    """The opted-in customers' calls (attributed, or prepaid with the account's customer) in the
    part's shape, each called number masked by its customer's mask_digits."""
    chosen = calls[calls["customer_id"].isin(list(settings.customers))]
    digits = chosen["customer_id"].map(lambda c: settings.customers[c].mask_digits)
    shown = [
        mask_tail(number, int(hidden))
        for number, hidden in zip(called_numbers(chosen), digits, strict=True)
    ]
    sequence = (
        pd.Series(PREPAID_SEQUENCE, index=chosen.index, dtype=object)
        if prepaid
        else chosen["sequence_number"].astype(str)
    )
    return pd.DataFrame(
        {
            "customer_id": chosen["customer_id"].astype(str),
            "sequence_number": sequence,
            "currency": chosen["currency"].astype(str),
            "user_id": chosen["user_id"].astype(str),
            "start_utc": chosen["start_utc"],
            "called_number_shown": pd.Series(shown, index=chosen.index, dtype=object),
            "tariff_version": chosen["tariff_version"].fillna(0).astype("int64"),
            "tariff_line": chosen["tariff_line"].fillna(0).astype("int64"),
            "duration_seconds": chosen["duration_seconds"].astype("int64"),
            "billed_seconds": chosen["billed_seconds"].astype("int64"),
            "cost_minor": chosen["cost_minor"].astype("int64"),
            "prepaid": prepaid,
            "source_file": chosen["source_file"].astype(str),
            "source_row": chosen["source_row"].astype("int64"),
        },
        columns=PART_COLUMNS,
    ).reset_index(drop=True)


def with_account_customers(
    prepaid_calls: pd.DataFrame, history: pd.DataFrame, snapshot_id: int
) -> pd.DataFrame:
    """Prepaid calls (not attributed: their balance pays) with their account's customer and
    sequence number in the month's snapshot ("" when the account is not in it)."""
    month = history[history["snapshot_id"] == snapshot_id].drop_duplicates("account_id")
    customers = month.set_index("account_id")["customer_id"]
    return prepaid_calls.assign(
        customer_id=prepaid_calls["user_id"].map(customers).fillna("").astype(str),
        sequence_number=PREPAID_SEQUENCE,
    )


def _sums(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return (
        frame.groupby(keys, sort=True)
        .agg(
            total_minor=("cost_minor", "sum"),
            call_count=("cost_minor", "size"),
            billed_seconds=("billed_seconds", "sum"),
        )
        .astype("int64")
    )


def check_statement_totals(
    calls: pd.DataFrame, user_lines: pd.DataFrame, customers: Iterable[str]
) -> None:
    """Raise StatementMismatch unless the post-paid statement calls sum, per customer, sequence
    number, currency and user, to the user lines of the opted-in `customers`: same keys, same
    totals to the cent, same calls and seconds."""
    postpaid = calls[~calls["prepaid"].astype(bool)]
    lines = user_lines[user_lines["customer_id"].isin(list(customers))]
    ours = _sums(postpaid, USER_KEYS)
    theirs = lines.set_index(USER_KEYS)[["total_minor", "call_count", "billed_seconds"]].astype(
        "int64"
    )
    joined = ours.join(theirs.add_suffix("_line"), how="outer").fillna(-1)
    wrong = joined[
        (joined["total_minor"] != joined["total_minor_line"])
        | (joined["call_count"] != joined["call_count_line"])
        | (joined["billed_seconds"] != joined["billed_seconds_line"])
    ]
    if len(wrong):
        shown = [
            f"{customer}/{sequence}/{currency}/{shown_id(user)}"
            for customer, sequence, currency, user in wrong.index[:5]
        ]
        raise StatementMismatch(
            f"{len(wrong)} statement sums differ from the user lines (first: {shown})"
        )


@dataclass(frozen=True)
class PrepaidPeriod:
    """An account's ledger over a period, by posting time (minor units)."""

    currency: str
    opening_minor: int
    debits_minor: int  # debits and their reversals (negative: money spent)
    topups_minor: int
    adjustments_minor: int  # credits, refunds and adjustments
    closing_minor: int


def prepaid_periods(
    conn: Connection, account_ids: list[str], start: datetime, end: datetime
) -> dict[str, PrepaidPeriod]:
    """The prepaid accounts among `account_ids` with their ledger over [start, end) by posting
    time: the opening balance is every entry before start, the closing one the opening plus the
    period's entries."""
    if not account_ids:
        return {}
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    currencies = dict(
        conn.execute(
            select(prepaid_account.c.account_id, prepaid_account.c.currency).where(
                prepaid_account.c.account_id.in_(account_ids)
            )
        ).all()
    )
    ids = list(currencies)
    before = dict(
        conn.execute(
            select(balance_entry.c.account_id, func.sum(balance_entry.c.amount_minor))
            .where(balance_entry.c.account_id.in_(ids), balance_entry.c.created_at < start)
            .group_by(balance_entry.c.account_id)
        ).all()
    )
    during: dict[tuple[str, str], int] = {
        (account, kind): int(amount)
        for account, kind, amount in conn.execute(
            select(
                balance_entry.c.account_id,
                balance_entry.c.kind,
                func.sum(balance_entry.c.amount_minor),
            )
            .where(
                balance_entry.c.account_id.in_(ids),
                balance_entry.c.created_at >= start,
                balance_entry.c.created_at < end,
            )
            .group_by(balance_entry.c.account_id, balance_entry.c.kind)
        ).all()
    }

    def period(account: str) -> PrepaidPeriod:
        def kinds(names: tuple[str, ...]) -> int:
            return sum(during.get((account, kind), 0) for kind in names)

        opening = int(before.get(account) or 0)
        debits, topups = kinds(DEBIT_KINDS), kinds(TOPUP_KINDS)
        adjustments = kinds(ADJUSTMENT_KINDS)
        return PrepaidPeriod(
            currencies[account],
            opening,
            debits,
            topups,
            adjustments,
            opening + debits + topups + adjustments,
        )

    return {account: period(account) for account in ids}


def month_addresses(conn: Connection, billing_month: str) -> dict[str, str]:
    """Each account's address (user_principal_name) in the month's entitlement snapshot."""
    query = (
        select(entitlement.c.account_id, entitlement.c.user_principal_name)
        .join(month_entitlement, month_entitlement.c.snapshot_id == entitlement.c.snapshot_id)
        .where(month_entitlement.c.billing_month == billing_month)
    )
    return {account: address for account, address in conn.execute(query).all() if address}


def tariff_destinations(conn: Connection, calls: pd.DataFrame) -> dict[tuple[int, int], str]:
    """The tariff destination of each (tariff version, line) the calls were priced by."""
    versions = sorted({int(v) for v in calls["tariff_version"].unique() if v})
    if not versions:
        return {}
    query = select(tariff_rate.c.version_id, tariff_rate.c.line, tariff_rate.c.destination).where(
        tariff_rate.c.version_id.in_(versions)
    )
    return {(int(v), int(line)): name for v, line, name in conn.execute(query).all()}


class StatementFrames(NamedTuple):
    """A batch's statements as the tables' rows (statement without its batch_id)."""

    statements: pd.DataFrame
    calls: pd.DataFrame
    subtotals: pd.DataFrame
    deliveries: pd.DataFrame


@dataclass(frozen=True)
class StatementInputs:
    """What the statements of one run are built from, read before the load's transaction."""

    run_id: str
    calls: pd.DataFrame  # the files' statement_calls parts
    user_lines: pd.DataFrame  # the month's user lines
    destinations: dict[tuple[int, int], str]
    addresses: dict[str, str]
    prepaid: dict[str, PrepaidPeriod]
    timezone: str
    now: datetime


def _destination_names(calls: pd.DataFrame, destinations: dict[tuple[int, int], str]) -> list:
    return [
        destinations.get((int(version), int(line)), PROVIDER_PRICED) if version else PROVIDER_PRICED
        for version, line in zip(calls["tariff_version"], calls["tariff_line"], strict=True)
    ]


def _subtotals(calls: pd.DataFrame, kind: str, column: str) -> pd.DataFrame:
    sums = (
        calls.groupby(["statement_id", column], sort=True)
        .agg(
            calls=("cost_minor", "size"),
            billed_seconds=("billed_seconds", "sum"),
            total_minor=("cost_minor", "sum"),
        )
        .reset_index()
        .rename(columns={column: "group_key"})
    )
    return sums.assign(kind=kind)[
        ["statement_id", "kind", "group_key", "calls", "billed_seconds", "total_minor"]
    ]


def build_statements(inputs: StatementInputs, settings: StatementSettings) -> StatementFrames:
    """The statements of the opted-in customers' users, their calls in start order, subtotals
    by destination and sequence number, prepaid ledgers and pending mails; raises
    StatementMismatch unless the post-paid calls equal the user lines to the cent."""
    check_statement_totals(inputs.calls, inputs.user_lines, settings.customers)
    calls = inputs.calls[inputs.calls["customer_id"].isin(list(settings.customers))]
    ids = [
        statement_id(inputs.run_id, c, u, cur)
        for c, u, cur in zip(calls["customer_id"], calls["user_id"], calls["currency"], strict=True)
    ]
    calls = calls.assign(statement_id=pd.Series(ids, index=calls.index, dtype=object))
    calls = calls.sort_values(["statement_id", "start_utc", "source_file", "source_row"])
    calls = calls.assign(
        call_no=calls.groupby("statement_id").cumcount().astype("int64") + 1,
        destination=_destination_names(calls, inputs.destinations),
    )
    heads = _statement_rows(calls, inputs, settings)
    return StatementFrames(
        heads,
        calls[[c.name for c in statement_call.columns]].reset_index(drop=True),
        pd.concat(
            [
                _subtotals(calls, DESTINATION, "destination"),
                _subtotals(calls, SEQUENCE, "sequence_number"),
            ],
            ignore_index=True,
        ),
        _deliveries(heads, inputs.now),
    )


def _statement_rows(
    calls: pd.DataFrame, inputs: StatementInputs, settings: StatementSettings
) -> pd.DataFrame:
    sums = _sums(calls, ["statement_id", *STATEMENT_KEYS]).reset_index()
    rows = []
    for row in sums.itertuples(index=False):
        customer = settings.customers[row.customer_id]
        ledger = inputs.prepaid.get(row.user_id)
        rows.append(
            {
                "statement_id": row.statement_id,
                "customer_id": row.customer_id,
                "user_id": row.user_id,
                "currency": row.currency,
                "address": inputs.addresses.get(row.user_id),
                "timezone": inputs.timezone,
                "mask_digits": customer.mask_digits,
                "deliver": customer.deliver,
                "total_minor": int(row.total_minor),
                "call_count": int(row.call_count),
                "billed_seconds": int(row.billed_seconds),
                "prepaid": ledger is not None,
                **_ledger_columns(ledger),
            }
        )
    columns = [c.name for c in statement.columns if c.name != "batch_id"]
    frame = pd.DataFrame(rows, columns=columns)
    ledger_columns = [c for c in columns if c.endswith("_minor") and c != "total_minor"]
    return frame.astype({c: "Int64" for c in ledger_columns})


def _ledger_columns(ledger: PrepaidPeriod | None) -> dict[str, int | None]:
    names = ("opening_minor", "debits_minor", "topups_minor", "adjustments_minor", "closing_minor")
    if ledger is None:
        return dict.fromkeys(names)
    return {name: getattr(ledger, name) for name in names}


def _deliveries(heads: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """A pending mail per statement whose customer delivers and whose user has an address."""
    mailed = heads[(heads["deliver"] != "none") & heads["address"].notna()]
    return pd.DataFrame(
        {
            "statement_id": mailed["statement_id"],
            "address": mailed["address"],
            "method": mailed["deliver"],
            "status": PENDING,
            "attempts": np.zeros(len(mailed), dtype=np.int64),
            "next_attempt_at": pd.Series([None] * len(mailed), index=mailed.index, dtype=object),
            "claimed_at": None,
            "message_id": None,
            "sent_at": None,
            "smtp_reply": None,
            "updated_at": now,
        },
        columns=[c.name for c in statement_delivery.columns],
    ).reset_index(drop=True)


# Reading statements back (render, mail, the Billing page, the portal).


@dataclass(frozen=True)
class StatementView:
    """One statement as a page or a PDF shows it."""

    head: dict  # the statement row, with billing_month and batch status
    calls: list[dict]
    subtotals: dict[str, list[dict]]  # kind -> rows


def read_statement(conn: Connection, wanted_id: str) -> StatementView | None:
    """A statement with its calls and subtotals, None if there is none with that id."""
    head = (
        conn.execute(
            select(statement, billing_batch.c.billing_month, billing_batch.c.status)
            .join(billing_batch, billing_batch.c.batch_id == statement.c.batch_id)
            .where(statement.c.statement_id == wanted_id)
        )
        .mappings()
        .first()
    )
    if head is None:
        return None
    calls = (
        conn.execute(
            select(statement_call)
            .where(statement_call.c.statement_id == wanted_id)
            .order_by(statement_call.c.call_no)
        )
        .mappings()
        .all()
    )
    subtotals: dict[str, list[dict]] = {DESTINATION: [], SEQUENCE: []}
    for row in conn.execute(
        select(statement_subtotal)
        .where(statement_subtotal.c.statement_id == wanted_id)
        .order_by(statement_subtotal.c.kind, statement_subtotal.c.group_key)
    ).mappings():
        subtotals.setdefault(row["kind"], []).append(dict(row))
    return StatementView(dict(head), [dict(c) for c in calls], subtotals)


def batch_statements(conn: Connection, batch_id: int) -> list[dict]:
    """A batch's statements (customer, user order) with their documents and mail status."""
    query = (
        select(
            statement,
            statement_document.c.html_path,
            statement_document.c.pdf_path,
            statement_delivery.c.status.label("delivery_status"),
            statement_delivery.c.attempts.label("delivery_attempts"),
        )
        .outerjoin(
            statement_document, statement_document.c.statement_id == statement.c.statement_id
        )
        .outerjoin(
            statement_delivery, statement_delivery.c.statement_id == statement.c.statement_id
        )
        .where(statement.c.batch_id == batch_id)
        .order_by(statement.c.customer_id, statement.c.user_id, statement.c.currency)
    )
    return [dict(row) for row in conn.execute(query).mappings()]
