"""The Billing page's HTML, rendered on the server: plain tables and an inline SVG bar chart,
no script and nothing loaded from elsewhere. Every value from the database or a report is
escaped. Links are relative, so the pages work under any URL prefix:
/billing/ links to month/<YYYY-MM>, a month page to <YYYY-MM>/files/... and back to ../.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cdr_billing.ui.queries import Batch, CustomerTotal, MonthDetail, MonthSummary, NotBilled

# The row counts of the current batch that the months list shows (the month page shows all).
MONTH_LIST_COUNTS = ("read", "billed", "unbillable", "suspense", "prepaid")
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1a202c;
       margin: 0; padding: 20px 28px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 0 0 10px; }
a { color: #0b6bcb; text-decoration: none; } a:hover { text-decoration: underline; }
.meta { color: #4a5568; margin: 0 0 16px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 18px;
        margin-bottom: 18px; }
section { border: 1px solid #e2e8f0; border-radius: 8px; padding: 14px 16px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 10px 5px 0; border-bottom: 1px solid #edf2f7;
         white-space: nowrap; }
th { color: #4a5568; font-weight: 600; font-size: 12px; text-transform: uppercase;
     letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tfoot td { font-weight: 600; border-bottom: none; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; }
.current { background: #c6f6d5; color: #22543d; }
.superseded { background: #e2e8f0; color: #4a5568; }
.ok { color: #2f855a; font-weight: 600; } .bad { color: #c53030; font-weight: 600; }
.files a { margin-right: 18px; } .empty { color: #718096; }
svg.chart { display: block; max-width: 100%; } .chart .bar { fill: #3182ce; }
.chart text { font-size: 12px; fill: #2d3748; font-variant-numeric: tabular-nums; }
.nav { display: flex; gap: 18px; margin: 0 0 12px; font-size: 13px; }
.nav a[aria-current] { color: #1a202c; font-weight: 600; }
section { min-width: 0; } body > section { margin-bottom: 18px; }
.scroll { overflow: auto; max-height: 70vh; } .scroll + h2 { margin-top: 16px; }
.scroll thead th { position: sticky; top: 0; background: #fff; }
.locked { background: #fed7d7; color: #822727; } .unlocked { background: #c6f6d5; color: #22543d; }
.above { color: #c53030; font-weight: 600; background: #fff5f5; padding: 0 4px;
         border-radius: 4px; }
.pending { color: #b7791f; font-weight: 600; }
.notice { background: #ebf8ff; border: 1px solid #bee3f8; border-radius: 6px; padding: 8px 12px; }
form.credit label { display: block; margin: 0 0 8px; } form.filter { margin: 0 0 10px; }
form.filter label { margin-right: 12px; } .paging a { margin-right: 14px; }
input, select, button { font: inherit; padding: 3px 6px; }
button { background: #0b6bcb; color: #fff; border: none; border-radius: 6px; padding: 4px 14px; }
"""

CHART_WIDTH, LABEL_WIDTH, VALUE_WIDTH, ROW, BAR = 640, 110, 130, 30, 20


def e(value: object) -> str:
    """Escape a value for HTML text and attributes."""
    return escape(str(value), quote=True)


def money(amount: Decimal, currency: str) -> str:
    """An exact amount with thousands separators and its currency."""
    return f"{amount:,} {currency}"


def number(count: int) -> str:
    """A count with thousands separators, as every page writes counts."""
    return f"{count:,}"


def timestamp(moment: datetime) -> str:
    """A load time in UTC, to the minute."""
    return (moment.astimezone(UTC) if moment.tzinfo else moment).strftime("%Y-%m-%d %H:%M UTC")


def nav(prefix: str, current: str) -> str:
    """The Billing pages' navigation; `prefix` leads from the page's folder to /billing/."""
    links = [("", "Billing months"), ("prepaid", "Prepaid accounts"), ("prepaid/outbox", "Outbox")]
    return (
        '<nav class="nav">'
        + "".join(
            f'<a href="{e(prefix + href) or "./"}"'
            + (' aria-current="page"' if label == current else "")
            + f">{e(label)}</a>"
            for href, label in links
        )
        + "</nav>"
    )


def page(title: str, body: str, style: str = "") -> str:
    """A whole HTML document; `style`: the CSS of one kind of page, after the common one."""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{STYLE}{style}</style></head><body>{body}</body></html>\n"
    )


def badge(status: str) -> str:
    """A batch status as a coloured label."""
    kind = "current" if status == "current" else "superseded"
    return f'<span class="badge {kind}">{e(status)}</span>'


def balance(batch: Batch) -> str:
    """Whether the batch's rows reconcile: read = sum of the outcomes."""
    return (
        '<span class="ok">&#10003; balanced</span>'
        if batch.balanced
        else '<span class="bad">&#10007; does not add up</span>'
    )


def table(
    headers: list[str], rows: list[list[str]], numeric: set[int], footer: list[str] | None = None
) -> str:
    """A table of already escaped cells; columns in `numeric` are right-aligned."""

    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f"<{tag}{' class=num' if i in numeric else ''}>{value}</{tag}>"
            for i, value in enumerate(values)
        )

    head = f"<thead><tr>{cells('th', [e(h) for h in headers])}</tr></thead>"
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    foot = f"<tfoot><tr>{cells('td', footer)}</tr></tfoot>" if footer else ""
    return f"<table>{head}<tbody>{body}</tbody>{foot}</table>"


def months_page(months: list[MonthSummary]) -> str:
    """The list of billing months: status, current batch, totals and row counts."""
    intro = (
        nav("", "Billing months") + "<h1>Billing</h1><p class=meta>Months in the billing database. "
        "Status is that of the month's newest batch; "
        "totals and row counts are those of the current batch.</p>"
    )
    if not months:
        return page("Billing", intro + '<p class="empty">No billing month has been loaded yet.</p>')
    headers = [
        "Month",
        "Status",
        "Current batch",
        "Loaded at",
        "Runs",
        "Lines",
        "Total",
        "Read",
        "Billed",
        "Unbillable",
        "Suspense",
        "Prepaid",
        "Rows",
    ]
    rows = []
    for month in months:
        current = month.current
        totals = "<br>".join(
            e(money(amount, currency)) for currency, amount in month.totals.items()
        )
        rows.append(
            [
                f'<a href="month/{e(month.billing_month)}">{e(month.billing_month)}</a>',
                badge(month.newest.status),
                e(current.batch_id) if current else "none",
                e(timestamp(current.loaded_at)) if current else "",
                e(month.batch_count),
                e(month.line_count),
                totals,
                *(
                    [e(current.count(name)) for name in MONTH_LIST_COUNTS]
                    if current
                    else [""] * len(MONTH_LIST_COUNTS)
                ),
                balance(current) if current else "",
            ]
        )
    return page(
        "Billing",
        intro
        + "<section>"
        + table(headers, rows, numeric={4, 5, 6, 7, 8, 9, 10, 11})
        + "</section>",
    )


def cost_chart(customers: list[CustomerTotal], currency: str) -> str:
    """A horizontal bar chart of the customers' totals in one currency, as inline SVG."""
    rows = [customer for customer in customers if customer.currency == currency]
    largest = max((customer.total_minor for customer in rows), default=0)
    span = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    height = ROW * len(rows) + 10
    parts = [
        '<svg class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{CHART_WIDTH}" height="{height}" viewBox="0 0 {CHART_WIDTH} {height}" '
        f'role="img" aria-label="Cost per customer in {e(currency)}">'
    ]
    for i, customer in enumerate(rows):
        y, amount = 5 + i * ROW, e(money(customer.total, currency))
        width = span * max(customer.total_minor, 0) / largest if largest > 0 else 0
        parts += [
            f'<text x="{LABEL_WIDTH - 8}" y="{y + BAR / 2}" '
            'text-anchor="end" dominant-baseline="middle">'
            f"{e(customer.customer_id)}</text>",
            f'<rect class="bar" data-customer="{e(customer.customer_id)}" '
            f'x="{LABEL_WIDTH}" y="{y}" width="{width:.1f}" height="{BAR}" rx="3">'
            f"<title>{e(customer.customer_id)}: {amount}</title></rect>",
            f'<text x="{LABEL_WIDTH + width + 6:.1f}" y="{y + BAR / 2}" '
            f'dominant-baseline="middle">{amount}</text>',
        ]
    return "".join(parts) + "</svg>"


def _customers_section(detail: MonthDetail) -> str:
    customers = detail.customers
    if not customers:
        return (
            '<section><h2>Totals per customer</h2><p class="empty">No billing lines.</p></section>'
        )
    rows = [
        [e(c.customer_id), e(c.currency), e(c.lines), e(c.calls), e(money(c.total, c.currency))]
        for c in customers
    ]
    currencies = sorted({c.currency for c in customers})
    sums = {
        cur: sum((c.total for c in customers if c.currency == cur), Decimal(0))
        for cur in currencies
    }
    footer = [
        "Total",
        "",
        e(sum(c.lines for c in customers)),
        e(sum(c.calls for c in customers)),
        "<br>".join(e(money(sums[cur], cur)) for cur in currencies),
    ]
    totals = table(
        ["Customer", "Currency", "Lines", "Calls", "Total"], rows, numeric={2, 3, 4}, footer=footer
    )
    charts = "".join(
        f"<h2>Cost per customer, {e(cur)}</h2>{cost_chart(customers, cur)}" for cur in currencies
    )
    return f"<section><h2>Totals per customer</h2>{totals}</section><section>{charts}</section>"


def _reconciliation_section(batch: Batch | None) -> str:
    if batch is None:
        return ""
    rows = [[e("read"), e(batch.count("read"))]] + [
        [e(label), e(count)] for label, count in batch.labelled_outcomes()
    ]
    counts = table(["Rows", "Count"], rows, numeric={1})
    return f"<section><h2>Reconciliation</h2>{counts}<p>{balance(batch)}</p></section>"


def _not_billed_section(title: str, key_header: str, items: list[NotBilled], empty: str) -> str:
    if not items:
        return f'<section><h2>{e(title)}</h2><p class="empty">{e(empty)}</p></section>'
    rows = [[e(item.key or "unknown"), e(item.reason_code), e(item.calls)] for item in items]
    calls = table([key_header, "Reason", "Calls"], rows, numeric={2})
    return f"<section><h2>{e(title)}</h2>{calls}</section>"


def _files_section(detail: MonthDetail) -> str:
    month, files = e(detail.billing_month), detail.files
    links = [
        (files.data_docs, f"{month}/data-docs/", "Great Expectations Data Docs"),
        (files.billing_csv, f"{month}/files/billing-csv", "Billing file (CSV)"),
        (files.billing_xlsx, f"{month}/files/billing-xlsx", "Billing file (Excel)"),
    ]
    shown = [
        f'<a href="{href}" target="_blank" rel="noopener">{e(label)}</a>'
        for path, href, label in links
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


def _held_files_section(held: list[dict[str, str]]) -> str:
    """Files delivered again with other content: not billed until an operator releases them."""
    if not held:
        return ""
    rows = [
        [e(f["source"]), e(f["name"]), f"<code>{e(f['sha256'][:12])}</code>", e(f["first_seen"])]
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
        [e(b.batch_id), badge(b.status), f"<code>{e(b.run_id)}</code>", e(timestamp(b.loaded_at))]
        for b in batches
    ]
    listed = table(["Batch", "Status", "Run", "Loaded at"], rows, numeric={0})
    return f"<section><h2>Batches</h2>{listed}</section>"


def _superseded(count: int) -> str:
    return "" if count == 0 else f" It superseded {count} earlier batch{'es' if count > 1 else ''}."


def month_page(detail: MonthDetail) -> str:
    """One month: totals and chart per customer, reconciliation, non-billed calls, files,
    batches."""
    current, month = detail.current, detail.billing_month
    if current:
        meta = (
            f"Current batch {e(current.batch_id)}, run <code>{e(current.run_id)}</code>, loaded "
            f"{e(timestamp(current.loaded_at))}.{_superseded(len(detail.batches) - 1)}"
        )
    else:
        meta = "The month has no current batch."
    body = (
        nav("../", "") + f'<p><a href="../">&larr; All months</a></p><h1>Billing month {e(month)} '
        f"{badge(detail.batches[0].status)}</h1><p class=meta>{meta}</p>{_files_section(detail)}"
        f'<div class="grid">{_customers_section(detail)}</div>'
        f'<div class="grid">{_reconciliation_section(current)}'
        + _not_billed_section(
            "Unbillable number ranges", "Number range", detail.unbillable, "No unbillable calls."
        )
        + _not_billed_section(
            "Suspense accounts", "Account", detail.suspense, "No calls in suspense."
        )
        + f"</div>{_held_files_section(detail.held_files)}{_batches_section(detail.batches)}"
    )
    return page(f"Billing {month}", body)


def message_page(title: str, text: str, link: tuple[str, str] | None = None) -> str:
    """A short page for errors: not found, not logged in, not allowed."""
    action = f'<p><a href="{e(link[0])}">{e(link[1])}</a></p>' if link else ""
    return page(title, f"<h1>{e(title)}</h1><p>{e(text)}</p>{action}")
