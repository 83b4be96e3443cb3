"""The drill-down's routes (drill_pages, drill_queries), below /billing/month/<YYYY-MM>/:

- lines (?customer=&sequence=&currency= the last line of the page before) and lines.csv
- customer/<customer>
- customer/<customer>/line/<sequence number>/<currency> (?after=<user>)
- customer/<customer>/line/<sequence number>/<currency>/user/<user> (?file=&row=)
- not-billed/<unbillable|suspense> (?page=)
- not-billed/<kind>/<reason>/<key> (?file=&row=; an empty key is an empty last segment)

Ids are percent-encoded path segments. The server decodes the path before routing, so an id
with a "/" would split; the ids are therefore read from the raw path, one segment each. A
malformed or unknown month or id is a 404 page that shows at most the first characters of it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from cdr_billing.ui.sealed_ids import segment_id
from cdr_billing.ui.web import NO_STORE, billing_db, html

if TYPE_CHECKING:
    from cdr_billing.ui.drill_queries import Line

router = APIRouter()

MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
MAX_ID = 128  # user ids are the longest: String(128)
MAX_SEGMENT = 3 * MAX_ID + 200  # an id percent-encoded, or sealed
MAX_FILE = 1000
MAX_ROW_DIGITS = 18
SHOWN = 40  # characters of a bad id a 404 page repeats
CSV_HEADERS = [
    "billing_month",
    "customer_id",
    "sequence_number",
    "currency",
    "calls",
    "billed_seconds",
    "minutes",
    "total",
]
Cursor = Annotated[str | None, Query(max_length=MAX_FILE)]


def _shown(value: str) -> str:
    """A bad id as a 404 page repeats it: its first characters, masked if a phone number."""
    from cdr_billing.ui.drill_pages import shown_id

    return shown_id(value if len(value) <= SHOWN else value[:SHOWN] + "…")


def _not_found(text: str) -> HTTPException:
    return HTTPException(404, text)


def _batch(billing_month: str) -> int:
    """The month's current batch; 404 for a malformed month or one without a current batch."""
    from cdr_billing.ui import drill_queries

    if not MONTH.fullmatch(billing_month):
        raise _not_found(f"{_shown(billing_month)!r} is not a billing month (YYYY-MM).")
    batch_id = drill_queries.current_batch(billing_db(), billing_month)
    if batch_id is None:
        raise _not_found(f"Billing month {billing_month} has no current batch.")
    return batch_id


def _ids(request: Request, area: str) -> list[str]:
    """The ids after month/<YYYY-MM>/<area>/, each one raw path segment, decoded or unsealed
    (sealed_ids); 404 when one is too long or its seal does not open."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    parts = raw.decode("latin-1").split("/")
    start = next(
        (i + 3 for i in range(len(parts) - 2) if parts[i] == "month" and parts[i + 2] == area),
        None,
    )
    if start is None:
        raise _not_found("No such page.")
    if any(len(part) > MAX_SEGMENT for part in parts[start:]):
        raise _not_found("No such page: an id in the address is too long.")
    ids = [segment_id(part) for part in parts[start:]]
    if any(value is None for value in ids):
        raise _not_found("No such page: the address was not made by this Billing app.")
    if any(len(value) > MAX_ID for value in ids):
        raise _not_found("No such page: an id in the address is too long.")
    return ids


def _after_call(file: str | None, row: str | None) -> tuple[str, int] | None:
    """The (file, row) cursor of a calls page; 404 when malformed."""
    if file is None and row is None:
        return None
    if file is None or row is None or not row.isdigit() or len(row) > MAX_ROW_DIGITS:
        raise _not_found("No such page: the paging cursor is not valid.")
    return file, int(row)


@router.get("/month/{billing_month}/lines", response_class=HTMLResponse)
def lines(
    billing_month: str,
    customer: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    sequence: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    currency: Annotated[str | None, Query(max_length=MAX_ID)] = None,
) -> HTMLResponse:
    """The month's lines per customer, sequence number and currency, a page at a time."""
    from cdr_billing.ui import drill_pages, drill_queries

    batch_id = _batch(billing_month)
    cursor = (customer, sequence, currency)
    after = cursor if None not in cursor else None
    if after is None and cursor != (None, None, None):
        raise _not_found("No such page: the paging cursor is not valid.")
    found = drill_queries.lines_page(billing_db(), batch_id, after)
    return html(drill_pages.lines_page(billing_month, found, first=after is None))


@router.get("/month/{billing_month}/lines.csv")
def lines_csv(billing_month: str) -> StreamingResponse:
    """Every line of the month's current batch as a CSV download."""
    from cdr_billing.ui import drill_queries

    batch_id = _batch(billing_month)
    chunks = drill_queries.all_lines(billing_db(), batch_id)
    return StreamingResponse(
        _csv_chunks(billing_month, chunks),
        media_type="text/csv; charset=utf-8",
        headers={
            **NO_STORE,
            "Content-Disposition": f'attachment; filename="billing_lines_{billing_month}.csv"',
        },
    )


def _csv_chunks(billing_month: str, chunks: Iterator[list[Line]]) -> Iterator[str]:
    """The download's text: the header, then each chunk of lines (text a spreadsheet would
    run as a formula neutralised, as in the billing file)."""
    from cdr_billing.billing_file import neutralise
    from cdr_billing.durations import minutes
    from cdr_billing.money import from_minor_units

    sink = io.StringIO()
    writer = csv.writer(sink)
    writer.writerow(CSV_HEADERS)
    for lines in chunks:
        writer.writerows(
            [
                billing_month,
                neutralise(line.customer_id),
                neutralise(line.sequence_number),
                line.currency,
                line.calls,
                line.seconds,
                minutes(line.seconds),
                from_minor_units(line.total_minor, line.currency),
            ]
            for line in lines
        )
        yield sink.getvalue()
        sink.seek(0)
        sink.truncate()


@router.get("/month/{billing_month}/customer/{ids:path}", response_class=HTMLResponse)
def customer_tree(
    request: Request,
    billing_month: str,
    ids: str,
    after: Annotated[str | None, Query(max_length=MAX_ID)] = None,
    file: Cursor = None,
    row: Annotated[str | None, Query(max_length=MAX_ROW_DIGITS + 1)] = None,
) -> HTMLResponse:
    """A customer's lines, a line's users, or a user's calls in a line."""
    from cdr_billing.ui import drill_pages, drill_queries

    batch_id = _batch(billing_month)
    engine = billing_db()
    match _ids(request, "customer"):
        case [customer]:
            found = drill_queries.customer_lines(engine, batch_id, customer)
            if not found:
                raise _not_found(f"No customer {_shown(customer)!r} in {billing_month}.")
            return html(drill_pages.customer_page(billing_month, customer, found))
        case [customer, "line", sequence, currency]:
            users = drill_queries.users_page(
                engine, batch_id, (customer, sequence, currency), after
            )
            if users is None:
                raise _not_found(
                    f"No line {_shown(customer)!r} / {_shown(sequence)!r} ({_shown(currency)}) "
                    f"in {billing_month}."
                )
            return html(drill_pages.users_page(billing_month, users, first=after is None))
        case [customer, "line", sequence, currency, "user", user]:
            cursor = _after_call(file, row)
            calls = drill_queries.calls_page(
                engine, batch_id, (customer, sequence, currency), user, cursor
            )
            if calls is None:
                raise _not_found(f"No user {_shown(user)!r} in that line of {billing_month}.")
            return html(drill_pages.calls_page(billing_month, calls, first=cursor is None))
    raise _not_found("No such page.")


@router.get("/month/{billing_month}/not-billed/{ids:path}", response_class=HTMLResponse)
def not_billed_tree(
    request: Request,
    billing_month: str,
    ids: str,
    page: Annotated[int, Query(ge=0)] = 0,
    file: Cursor = None,
    row: Annotated[str | None, Query(max_length=MAX_ROW_DIGITS + 1)] = None,
) -> HTMLResponse:
    """A kind's groups (unbillable: number ranges, suspense: accounts), or a group's rows."""
    from cdr_billing.ui import drill_pages, drill_queries

    batch_id = _batch(billing_month)
    engine = billing_db()
    match _ids(request, "not-billed"):
        case [kind] if kind in drill_queries.KINDS:
            if page > drill_queries.MAX_GROUP_PAGE:
                raise _not_found("No such page.")
            groups = drill_queries.groups_page(engine, batch_id, kind, page)
            return html(drill_pages.groups_page(billing_month, groups))
        case [kind, reason_code, key] if kind in drill_queries.KINDS:
            cursor = _after_call(file, row)
            rows = drill_queries.group_rows_page(engine, batch_id, kind, reason_code, key, cursor)
            if rows is None:
                raise _not_found(
                    f"No {kind} calls of {_shown(key)!r} for {_shown(reason_code)!r} "
                    f"in {billing_month}."
                )
            return html(drill_pages.group_rows_page(billing_month, rows, first=cursor is None))
    raise _not_found("No such page.")
