"""The Billing page's Statements card: a month's statements (current batch) with their totals,
mail status and links to each statement's page and PDF. User ids are shown masked where they
may be phone numbers; a statement's URL carries only its opaque id (a hash)."""

from __future__ import annotations

from cdr_billing.money import from_minor_units
from cdr_billing.privacy import shown_id
from cdr_billing.ui.pages import e, nav, page

STATEMENTS_STYLE = """
.statements td.n { text-align: right; font-variant-numeric: tabular-nums; }
.statements .unknown, .statements .bounced { color: #b00020; font-weight: bold; }
"""


def _amount(minor: int, currency: str) -> str:
    return f"{from_minor_units(int(minor), currency)} {currency}"


def _row(statement: dict) -> str:
    ident = e(statement["statement_id"])
    status = statement.get("delivery_status") or (
        "not mailed" if statement["deliver"] == "none" else "no address"
    )
    cells = [
        e(statement["customer_id"]),
        e(shown_id(statement["user_id"])),
        f'<td class="n">{statement["call_count"]}</td>',
        f'<td class="n">{e(_amount(statement["total_minor"], statement["currency"]))}</td>',
        f'<span class="{e(status)}">{e(status)}</span>',
        f'<a href="statements/{ident}.html">page</a> · <a href="statements/{ident}.pdf">PDF</a>',
    ]
    return "<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in cells) + "</tr>"


def statements_card(statements: list[dict]) -> str:
    """The card: one row per statement; a sentence when the month has none."""
    if not statements:
        return (
            '<section class="card statements"><h2>Statements</h2><p>No statements for this '
            "month: no customer opts in (statements: in the pipeline config).</p></section>"
        )
    unknown = sum(1 for s in statements if s.get("delivery_status") == "unknown")
    warning = (
        f'<p class="unknown">{unknown} mails may or may not have gone (the sender stopped '
        "mid-mail): check the mail server's log; they are never resent automatically.</p>"
        if unknown
        else ""
    )
    head = "".join(
        f"<th>{h}</th>" for h in ("Customer", "User", "Calls", "Total", "Mail", "Statement")
    )
    rows = "".join(_row(s) for s in statements)
    return (
        f'<section class="card statements"><h2>Statements ({len(statements)})</h2>{warning}'
        f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>"
    )


def statements_page(billing_month: str, statements: list[dict]) -> str:
    """The month's Statements card as a page of its own."""
    body = (
        f'{nav("../../", "")}<p class="crumbs"><a href="../{e(billing_month)}">'
        f"Month {e(billing_month)}</a></p><h1>Statements {e(billing_month)}</h1>"
        f"{statements_card(statements)}"
    )
    return page(f"Statements {billing_month}", body, style=STATEMENTS_STYLE, times=False)
