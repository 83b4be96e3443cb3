"""What the Billing page's drill-down shows, from the month's current batch: its lines per
(customer, sequence number, currency), a customer's lines, a line's users, a user's calls in
the line, and the rows not billed per group (unbillable: number range, suspense: account) with
the group's rows.

Every query reads a bounded page along an index, so a month of 10 million calls answers as
fast as a small one: billing_line and billing_user_line by their keys, billed_call by
billed_call_of_user (a user's calls in a line by file and row), the groups from
not_billed_group (summed by the load), a group's rows by billing_exception_of_group. Pages
go forward by keyset (the last row shown), never by offset into millions of rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple

from sqlalchemy import func, select, tuple_
from sqlalchemy.engine import Connection, Engine

from cdr_billing.database import in_utc
from cdr_billing.schema import (
    CURRENT,
    billed_call,
    billing_batch,
    billing_exception,
    billing_line,
    billing_user_line,
    line_user_key,
    not_billed_group,
)

if TYPE_CHECKING:
    pass

LINES_PER_PAGE = 500
USERS_PER_PAGE = 200
CALLS_PER_PAGE = 100
GROUPS_PER_PAGE = 200
MAX_GROUP_PAGE = 10_000  # groups are paged by offset; beyond this, a page is refused
# the kinds of non-billed rows the drill-down groups (as the load sums them)
KINDS = ("unbillable", "suspense")


class Line(NamedTuple):
    """A billing line: one customer's sequence number in one currency (a named tuple: the
    download makes thousands)."""

    customer_id: str
    sequence_number: str
    currency: str
    calls: int
    seconds: int
    total_minor: int


@dataclass(frozen=True)
class CurrencyTotal:
    """All lines of the batch in one currency."""

    currency: str
    lines: int
    calls: int
    seconds: int
    total_minor: int


@dataclass(frozen=True)
class LinesPage:
    """A page of the batch's lines, the batch's totals, and whether lines follow."""

    batch_id: int
    lines: list[Line]
    totals: list[CurrencyTotal]
    more: bool


@dataclass(frozen=True)
class UserLine:
    """One user's calls in a line, summed."""

    user_id: str
    calls: int
    seconds: int
    total_minor: int


@dataclass(frozen=True)
class UsersPage:
    """A line and a page of its users by id."""

    line: Line
    users: list[UserLine]
    more: bool


@dataclass(frozen=True)
class Call:
    """A billed call and the CDR row it came from."""

    source_file: str
    source_row: int
    transaction_id: str
    start_utc: datetime
    seconds: int
    cost_minor: int
    pricing: str
    combined_rows: str


@dataclass(frozen=True)
class CallsPage:
    """A user's line and a page of its calls in file and row order."""

    line: Line
    user: UserLine
    calls: list[Call]
    more: bool


@dataclass(frozen=True)
class Group:
    """Non-billed rows of one kind, reason and key (number range or account); seconds None
    when the batch's load did not record them."""

    kind: str
    reason_code: str
    key: str
    calls: int
    seconds: int | None


@dataclass(frozen=True)
class GroupsPage:
    """A page of a kind's groups, most calls first, and the kind's totals."""

    kind: str
    groups: list[Group]
    calls: int
    seconds: int | None
    page: int
    more: bool


@dataclass(frozen=True)
class NotBilledRow:
    """A non-billed row: where it came from and what its detail records."""

    source_file: str
    source_row: int
    transaction_id: str
    seconds: int | None
    user_id: str
    number_range: str


@dataclass(frozen=True)
class GroupRowsPage:
    """A group and a page of its rows in file and row order."""

    group: Group
    rows: list[NotBilledRow]
    more: bool


def current_batch(engine: Engine, billing_month: str) -> int | None:
    """The month's current batch (the one index entry per month), or None."""
    with engine.connect() as conn:
        return conn.execute(
            select(billing_batch.c.batch_id).where(
                billing_batch.c.billing_month == billing_month, billing_batch.c.status == CURRENT
            )
        ).scalar()


def _line(row) -> Line:
    """A Line from a row of _lines_query (its columns in Line's order)."""
    return Line._make(row)


def _lines_query(batch_id: int):
    line = billing_line.c
    return (
        select(
            line.customer_id,
            line.sequence_number,
            line.currency,
            line.call_count,
            line.billed_seconds,
            line.total_minor,
        )
        .where(line.batch_id == batch_id)
        .order_by(line.customer_id, line.sequence_number, line.currency)
    )


def _currency_totals(conn: Connection, batch_id: int) -> list[CurrencyTotal]:
    line = billing_line.c
    query = (
        select(
            line.currency,
            func.count(),
            func.sum(line.call_count),
            func.sum(line.billed_seconds),
            func.sum(line.total_minor),
        )
        .where(line.batch_id == batch_id)
        .group_by(line.currency)
        .order_by(line.currency)
    )
    return [
        CurrencyTotal(currency, int(lines), int(calls), int(seconds), int(total))
        for currency, lines, calls, seconds, total in conn.execute(query)
    ]


def lines_page(
    engine: Engine, batch_id: int, after: tuple[str, str, str] | None = None
) -> LinesPage:
    """The batch's lines by (customer, sequence number, currency) after `after`, a page."""
    line = billing_line.c
    query = _lines_query(batch_id).limit(LINES_PER_PAGE + 1)
    if after is not None:
        query = query.where(tuple_(line.customer_id, line.sequence_number, line.currency) > after)
    with engine.connect() as conn:
        rows = [_line(row) for row in conn.execute(query).all()]
        totals = _currency_totals(conn, batch_id)
    return LinesPage(batch_id, rows[:LINES_PER_PAGE], totals, len(rows) > LINES_PER_PAGE)


def all_lines(engine: Engine, batch_id: int, chunk: int = 500) -> Iterator[list[Line]]:
    """Every line of the batch in order (the download), `chunk` lines at a time from a
    server-side cursor: each chunk is garbage before the next, so a download of thousands of
    lines leaves no pile of objects that would start a full garbage collection (100 ms and
    more in a process of Airflow's size)."""
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(_lines_query(batch_id))
        for rows in result.partitions(chunk):
            yield [_line(row) for row in rows]


def customer_lines(engine: Engine, batch_id: int, customer_id: str) -> list[Line]:
    """A customer's lines (its sequence numbers, per currency)."""
    query = _lines_query(batch_id).where(billing_line.c.customer_id == customer_id)
    with engine.connect() as conn:
        return [_line(row) for row in conn.execute(query)]


def _one_line(conn: Connection, batch_id: int, key: tuple[str, str, str]) -> Line | None:
    line = billing_line.c
    row = conn.execute(
        _lines_query(batch_id).where(
            line.customer_id == key[0],
            line.sequence_number == key[1],
            line.currency == key[2],
        )
    ).first()
    return _line(row) if row else None


def _user_line(row) -> UserLine:
    return UserLine(row.user_id, int(row.call_count), int(row.billed_seconds), int(row.total_minor))


def _of_line(table, batch_id: int, key: tuple[str, str, str]) -> list:
    return [
        table.c.batch_id == batch_id,
        table.c.customer_id == key[0],
        table.c.sequence_number == key[1],
        table.c.currency == key[2],
    ]


def users_page(
    engine: Engine, batch_id: int, key: tuple[str, str, str], after: str | None = None
) -> UsersPage | None:
    """A line (customer, sequence number, currency) and a page of its users by id after
    `after`; None when the batch has no such line."""
    user = billing_user_line.c
    query = (
        select(billing_user_line)
        .where(*_of_line(billing_user_line, batch_id, key))
        .order_by(user.user_id)
        .limit(USERS_PER_PAGE + 1)
    )
    if after is not None:
        query = query.where(user.user_id > after)
    with engine.connect() as conn:
        line = _one_line(conn, batch_id, key)
        if line is None:
            return None
        rows = [_user_line(row) for row in conn.execute(query)]
    return UsersPage(line, rows[:USERS_PER_PAGE], len(rows) > USERS_PER_PAGE)


def calls_page(
    engine: Engine,
    batch_id: int,
    key: tuple[str, str, str],
    user_id: str,
    after: tuple[str, int] | None = None,
) -> CallsPage | None:
    """A user's calls in a line after (file, row) `after`, a page in file and row order (the
    index billed_call_of_user by the user's key; the real columns rule out a hash collision);
    None when the line has no such user."""
    call = billed_call.c
    query = (
        select(
            call.source_file,
            call.source_row,
            call.transaction_id,
            call.start_utc,
            call.billed_seconds,
            call.cost_minor,
            call.pricing,
            call.combined_rows,
        )
        .where(
            call.line_user_key == line_user_key(*key, user_id),  # the index's range
            *_of_line(billed_call, batch_id, key),
            call.user_id == user_id,
        )
        .order_by(call.source_file, call.source_row)
        .limit(CALLS_PER_PAGE + 1)
    )
    if after is not None:
        query = query.where(tuple_(call.source_file, call.source_row) > after)
    user = billing_user_line.c
    with engine.connect() as conn:
        line = _one_line(conn, batch_id, key)
        found = conn.execute(
            select(billing_user_line).where(
                *_of_line(billing_user_line, batch_id, key), user.user_id == user_id
            )
        ).first()
        if line is None or found is None:
            return None
        rows = [
            Call(
                row.source_file,
                int(row.source_row),
                row.transaction_id,
                in_utc(row.start_utc),
                int(row.billed_seconds),
                int(row.cost_minor),
                row.pricing,
                row.combined_rows,
            )
            for row in conn.execute(query)
        ]
    return CallsPage(line, _user_line(found), rows[:CALLS_PER_PAGE], len(rows) > CALLS_PER_PAGE)


def _group(row) -> Group:
    return Group(
        row.kind,
        row.reason_code,
        row.group_key,
        int(row.calls),
        None if row.seconds is None else int(row.seconds),
    )


def groups_page(engine: Engine, batch_id: int, kind: str, page: int = 0) -> GroupsPage:
    """A page of the kind's groups (most calls first), and the kind's calls and seconds."""
    group = not_billed_group.c
    of_kind = (group.batch_id == batch_id, group.kind == kind)
    query = (
        select(not_billed_group)
        .where(*of_kind)
        .order_by(group.calls.desc(), group.reason_code, group.group_key)
        .offset(page * GROUPS_PER_PAGE)
        .limit(GROUPS_PER_PAGE + 1)
    )
    totals = select(
        func.sum(group.calls), func.sum(group.seconds), func.count(group.seconds), func.count()
    ).where(*of_kind)
    with engine.connect() as conn:
        rows = [_group(row) for row in conn.execute(query)]
        calls, seconds, recorded, groups = conn.execute(totals).one()
    return GroupsPage(
        kind,
        rows[:GROUPS_PER_PAGE],
        int(calls or 0),
        int(seconds) if groups and recorded == groups else None,
        page,
        len(rows) > GROUPS_PER_PAGE,
    )


def _detail_text(detail: dict, field: str) -> str:
    value = detail.get(field)
    return "" if value is None or value != value else str(value)  # NaN != NaN


def _not_billed_row(row) -> NotBilledRow:
    try:
        detail = json.loads(row.detail or "{}", parse_constant=lambda _: None)
    except ValueError:
        detail = {}
    detail = detail if isinstance(detail, dict) else {}
    seconds = detail.get("duration_seconds")
    return NotBilledRow(
        row.source_file,
        int(row.source_row),
        row.transaction_id,
        seconds if isinstance(seconds, int) else None,
        _detail_text(detail, "user_id"),
        _detail_text(detail, "number_range"),
    )


def group_rows_page(
    engine: Engine,
    batch_id: int,
    kind: str,
    reason_code: str,
    key: str,
    after: tuple[str, int] | None = None,
) -> GroupRowsPage | None:
    """A group and a page of its rows after (file, row) `after` in file and row order (the
    index billing_exception_of_group); None when the batch has no such group."""
    group, row = not_billed_group.c, billing_exception.c
    query = (
        select(row.source_file, row.source_row, row.transaction_id, row.detail)
        .where(
            row.batch_id == batch_id,
            row.kind == kind,
            row.reason_code == reason_code,
            row.group_key == key,
        )
        .order_by(row.source_file, row.source_row)
        .limit(CALLS_PER_PAGE + 1)
    )
    if after is not None:
        query = query.where(tuple_(row.source_file, row.source_row) > after)
    with engine.connect() as conn:
        found = conn.execute(
            select(not_billed_group).where(
                group.batch_id == batch_id,
                group.kind == kind,
                group.reason_code == reason_code,
                group.group_key == key,
            )
        ).first()
        if found is None:
            return None
        rows = [_not_billed_row(item) for item in conn.execute(query)]
    return GroupRowsPage(_group(found), rows[:CALLS_PER_PAGE], len(rows) > CALLS_PER_PAGE)
