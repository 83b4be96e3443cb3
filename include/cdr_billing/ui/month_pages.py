"""The page of one billing month (month/<YYYY-MM>): totals and a chart per customer, each
customer linked to its lines (drill_pages), the reconciliation, the non-billed calls by number
range and account linked to their rows, the validation results and billing files, held files
and batches, each batch's run linked to the Airflow UI (runs_pages)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from cdr_billing.run_attempts import airflow_run_id
from cdr_billing.ui import drill_pages, runs_pages
from cdr_billing.ui.pages import (
    CHART_BAR,
    CHART_ROW,
    CHART_TEXT,
    badge,
    balance,
    e,
    money,
    nav,
    number,
    page,
    reason,
    table,
    timestamp,
)
from cdr_billing.ui.queries import MONTH_PAGE_TOP as TOP

if TYPE_CHECKING:
    from cdr_billing.ui.queries import Batch, CurrencyTotal, CustomerTotal, MonthDetail, NotBilled


def _largest(customers: list[CustomerTotal], currency: str) -> list[CustomerTotal]:
    """The TOP customers of a currency by total, largest first (ties by id)."""
    mine = (customer for customer in customers if customer.currency == currency)
    return sorted(mine, key=lambda customer: (-customer.total_minor, customer.customer_id))[:TOP]


def cost_chart(customers: list[CustomerTotal], currency: str) -> str:
    """A bar chart of the TOP customers' totals in one currency, as inline SVG: per customer, its
    id and total on a line and its bar below, sized in percent, so the chart takes its card's
    width and its text keeps its size (legible on a phone, never scaled down)."""
    rows = _largest(customers, currency)
    largest = max((customer.total_minor for customer in rows), default=0)
    height = CHART_ROW * len(rows)
    parts = [
        '<svg class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="100%" height="{height}" '
        f'role="img" aria-label="Cost per customer in {e(currency)}">'
    ]
    for i, customer in enumerate(rows):
        top, amount = i * CHART_ROW, e(money(customer.total, currency))
        share = 100 * max(customer.total_minor, 0) / largest if largest > 0 else 0
        bar = top + CHART_TEXT + 5
        parts += [
            f'<text x="0" y="{top + CHART_TEXT}">{e(customer.customer_id)}</text>',
            f'<text x="100%" y="{top + CHART_TEXT}" text-anchor="end">{amount}</text>',
            f'<rect class="track" x="0" y="{bar}" width="100%" height="{CHART_BAR}" rx="3"/>',
            f'<rect class="bar" data-customer="{e(customer.customer_id)}" '
            f'x="0" y="{bar}" width="{share:.2f}%" height="{CHART_BAR}" rx="3">'
            f"<title>{e(customer.customer_id)}: {amount}</title></rect>",
        ]
    return "".join(parts) + "</svg>"


def _customers_section(detail: MonthDetail) -> str:
    customers = detail.customers
    if not customers:
        return (
            '<section><h2>Totals per customer</h2><p class="empty">No billing lines.</p></section>'
        )
    month, sums = detail.billing_month, detail.currency_totals
    currencies = [total.currency for total in sums]
    shown = [c for cur in currencies for c in _largest(customers, cur)]
    everyone = sum(total.customers for total in sums)
    rows = [
        [
            f'<a href="{e(drill_pages.customer_href(month, c.customer_id))}">'
            f"{e(c.customer_id)}</a>",
            e(c.currency),
            e(number(c.lines)),
            e(number(c.calls)),
            e(money(c.total, c.currency)),
        ]
        for c in shown
    ]
    footer = [
        "Total",
        "",
        e(number(sum(total.lines for total in sums))),
        e(number(sum(total.calls for total in sums))),
        "<br>".join(e(money(total.total, total.currency)) for total in sums),
    ]
    totals = table(
        ["Customer", "Currency", "Lines", "Calls", "Total"], rows, numeric={2, 3, 4}, footer=footer
    )
    charts = "".join(
        f"<h2>Cost per customer, {e(total.currency)}{_top_of(total)}</h2>"
        f"{cost_chart(customers, total.currency)}"
        for total in sums
    )
    title = "Totals per customer" + (
        f", the top {TOP} per currency" if len(shown) < everyone else ""
    )
    every = (
        f'<p><a href="{e(drill_pages.segment(month))}/lines">All {e(number(everyone))} '
        "customers' lines</a></p>"
        if len(shown) < everyone
        else ""
    )
    return f"<section><h2>{title}</h2>{totals}{every}</section><section>{charts}</section>"


def _top_of(total: CurrencyTotal) -> str:
    """ ", the top 20 of N" when the chart leaves customers of the currency out."""
    return f", the top {TOP} of {number(total.customers)}" if total.customers > TOP else ""


def _reconciliation_section(batch: Batch | None) -> str:
    if batch is None:
        return ""
    rows = [[reason("read"), e(number(batch.count("read")))]] + [
        [reason(name), e(number(count))] for name, count in batch.outcomes()
    ]
    counts = table(["Rows", "Count"], rows, numeric={1})
    return f"<section><h2>Reconciliation</h2>{counts}<p>{balance(batch)}</p></section>"


def _group_link(billing_month: str, kind: str, item: NotBilled) -> str:
    """A group's number range or account (masked when it looks like a phone number), linked to
    its rows."""
    href = drill_pages.group_href(billing_month, kind, item.reason_code, item.key)
    return f'<a href="{e(href)}">{e(drill_pages.shown_id(item.key) if item.key else "unknown")}</a>'


def _not_billed_section(
    detail: MonthDetail, kind: str, title: str, key_header: str, empty: str
) -> str:
    """A kind's groups (number range or account, reason, calls), each linked to its rows."""
    items: list[NotBilled] = getattr(detail, kind)
    if not items:
        return f'<section><h2>{e(title)}</h2><p class="empty">{e(empty)}</p></section>'
    rows = [
        [
            _group_link(detail.billing_month, kind, item),
            reason(item.reason_code),
            e(number(item.calls)),
        ]
        for item in items
    ]
    calls = table([key_header, "Reason", "Calls"], rows, numeric={2})
    more, count = "", detail.group_counts[kind]
    if count > len(items):
        href = f"{drill_pages.segment(detail.billing_month)}/{drill_pages.groups_path(kind)}"
        more = f'<p><a href="{e(href)}">All {e(number(count))} groups, with minutes</a></p>'
    return f"<section><h2>{e(title)}</h2>{calls}{more}</section>"


def _files_section(detail: MonthDetail) -> str:
    """The validation results and the billing files (downloads: the UI's frame allows them, not
    new windows)."""
    month, files = e(detail.billing_month), detail.files
    validation = runs_pages.validation_href(detail.billing_month, prefix="../")
    shown = [f'<a href="{e(validation)}">Validation results</a>'] if files.data_docs else []
    shown += [
        f'<a href="{href}" download>{e(label)}</a>'
        for path, href, label in (
            (files.billing_csv, f"{month}/files/billing-csv", "Billing file (CSV)"),
            (files.billing_xlsx, f"{month}/files/billing-xlsx", "Billing file (Excel)"),
        )
        if path
    ]
    return (
        "<p class=files>"
        + (
            "".join(shown)
            or '<span class="empty">The run of this batch left no report files.</span>'
        )
        + "</p>"
    )


def _stored_time(text: str) -> str:
    """A time the ledger hands over as text (str of a datetime), in the billing timezone."""
    try:
        return timestamp(datetime.fromisoformat(text))
    except ValueError:
        return text


def _held_files_section(held: list[dict[str, str]]) -> str:
    """Files delivered again with other content: not billed until an operator releases them."""
    if not held:
        return ""
    rows = [
        [
            e(f["source"]),
            e(f["name"]),
            f"<code>{e(f['sha256'][:12])}</code>",
            e(_stored_time(f["first_seen"])),
        ]
        for f in held
    ]
    release = (
        "<p>Not billed until released: "
        "<code>python -m cdr_billing.ledger release NAME</code>, "
        "or a run with <code>release_held_files</code>.</p>"
    )
    files = table(["Source", "File", "Content", "First seen"], rows, set())
    return f"<section><h2>Held files</h2>{release}{files}</section>"


def _batches_section(batches: list[Batch]) -> str:
    rows = [
        [
            e(b.batch_id),
            badge(b.status),
            runs_pages.run_link(airflow_run_id(b.run_id), "../", b.run_id),
            e(timestamp(b.loaded_at)),
        ]
        for b in batches
    ]
    listed = table(["Batch", "Status", "Run", "Loaded at"], rows, numeric={0})
    return f"<section><h2>Batches</h2>{listed}</section>"


def _superseded(count: int) -> str:
    return "" if count == 0 else f" It superseded {count} earlier batch{'es' if count > 1 else ''}."


def month_page(detail: MonthDetail) -> str:
    """One month: totals and chart per customer, its lines and calls, reconciliation, non-billed
    calls, files, batches."""
    current, month = detail.current, detail.billing_month
    if current:
        meta = (
            f"Current batch {e(current.batch_id)}, run "
            f"{runs_pages.run_link(airflow_run_id(current.run_id), '../', current.run_id)}, loaded "
            f"{e(timestamp(current.loaded_at))}.{_superseded(len(detail.batches) - 1)}"
        )
    else:
        meta = "The month has no current batch."
    body = (
        nav("../", "") + f'<p><a href="../">&larr; All months</a></p><h1>Billing month {e(month)} '
        f"{badge(detail.batches[0].status)}</h1><p class=meta>{meta}</p>{_files_section(detail)}"
        + (drill_pages.month_links(month, detail.statement_count) if current else "")
        + f'<div class="grid">{_customers_section(detail)}</div>'
        f'<div class="grid">{_reconciliation_section(current)}'
        + _not_billed_section(
            detail, "unbillable", "Unbillable number ranges", "Number range", "No unbillable calls."
        )
        + _not_billed_section(
            detail, "suspense", "Suspense accounts", "Account", "No calls in suspense."
        )
        + f"</div>{_held_files_section(detail.held_files)}{_batches_section(detail.batches)}"
    )
    return page(f"Billing {month}", body, style=runs_pages.STYLE + drill_pages.DRILL_STYLE)
