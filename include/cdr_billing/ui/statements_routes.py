"""The Statements routes below /billing/month/<YYYY-MM>/:

- statements: the month's statements (current batch), totals, mail status, links
- statements/<id>.html and statements/<id>.pdf: one statement of the month, as archived (or
  rendered now if not yet); 404 for an id that is not a statement of the month's current batch

The id is the statement's opaque hash (never a user id, which may be a phone number).
"""

from __future__ import annotations

import re

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

from cdr_billing.ui.web import NO_STORE, billing_db, html

router = APIRouter()

MONTH = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
STATEMENT_ID = re.compile(r"[0-9a-f]{32}")
# the statement's own HTML has its style inline and nothing else
STATEMENT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'self'"


def _batch(billing_month: str) -> int:
    from cdr_billing.ui import drill_queries

    if not MONTH.fullmatch(billing_month):
        raise HTTPException(404, "Not a billing month (YYYY-MM).")
    batch_id = drill_queries.current_batch(billing_db(), billing_month)
    if batch_id is None:
        raise HTTPException(404, f"Billing month {billing_month} has no current batch.")
    return batch_id


@router.get("/month/{billing_month}/statements", response_class=HTMLResponse)
def month_statements(billing_month: str) -> HTMLResponse:
    """The month's statements."""
    from cdr_billing.statements import batch_statements
    from cdr_billing.ui.statements_pages import statements_page

    batch_id = _batch(billing_month)
    with billing_db().connect() as conn:
        found = batch_statements(conn, batch_id)
    return html(statements_page(billing_month, found))


@router.get("/month/{billing_month}/statements/{statement_file}")
def statement_file(billing_month: str, statement_file: str) -> Response:
    """One statement of the month as its page (.html) or PDF (.pdf)."""
    from sqlalchemy import select

    from cdr_billing.schema import statement
    from cdr_billing.statement_render import statement_document_bytes

    wanted, _, kind = statement_file.partition(".")
    if kind not in ("html", "pdf") or not STATEMENT_ID.fullmatch(wanted):
        raise HTTPException(404, "No such statement.")
    batch_id = _batch(billing_month)
    with billing_db().connect() as conn:
        owner = conn.execute(
            select(statement.c.batch_id).where(statement.c.statement_id == wanted)
        ).scalar()
        if owner != batch_id:
            raise HTTPException(404, "No such statement in this month.")
        content = statement_document_bytes(conn, wanted, kind)
    media = "application/pdf" if kind == "pdf" else "text/html; charset=utf-8"
    headers = {**NO_STORE, "Content-Security-Policy": STATEMENT_POLICY}
    if kind == "pdf":
        headers["Content-Disposition"] = f'inline; filename="statement-{billing_month}.pdf"'
    return Response(content, media_type=media, headers=headers)
