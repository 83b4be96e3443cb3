"""The Billing page's HTML, rendered on the server: plain tables and an inline SVG bar chart,
nothing loaded from elsewhere, one small inline script (PAGE_SCRIPT, allowed by its hash).
Every value from the database or a report is escaped. Links are relative, so the pages work
under any URL prefix: /billing/ links to month/<YYYY-MM>, a month page to <YYYY-MM>/files/...
and back to ../.

One look for every page: times in the billing timezone with its abbreviation (timestamp),
counts, minutes and money with thousands separators (number, minutes, money), codes in words
with the code as a tooltip (reason_label, reason); light or dark as the Airflow UI around the
frame shows itself (PAGE_SCRIPT), else as the browser prefers; and a layout that fits a 390 px
wide phone: tables scroll inside their card.

The pages live in the Airflow UI's sandboxed frame (scripts and same origin, no popups, no top
navigation). PAGE_SCRIPT (1) follows the UI's theme: the UI marks its own root element with
the class `dark` or `light` (next-themes), the script copies it to the page's data-theme and
watches it; (2) opens links marked `data-ui-href` (Airflow UI pages, e.g. a run) in the UI
itself through its router (history.pushState and a popstate event on the same-origin top
window), where a plain link would load the whole UI inside the frame. Without the script (a
page opened on its own) the colours follow prefers-color-scheme and such links are plain.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from html import escape
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from cdr_billing.ui.queries import Batch, MonthSummary

# The row counts of the current batch that the months list shows (the month page shows all).
MONTH_LIST_COUNTS = ("read", "billed", "unbillable", "suspense", "prepaid")
DARK = (
    "--fg: #e2e8f0; --muted: #a0aec0; --faint: #a0aec0; --bg: #171923; --rule: #2d3748; "
    "--border: #2d3748; --link: #63b3ed; --bar: #4299e1; --track: #2d3748; --ok: #68d391; "
    "--bad: #fc8181; --pending: #f6e05e; --notice-bg: #1a365d; --notice-border: #2c5282; "
    "--above-bg: #3c1e1e; --field-bg: #1a202c; --field-border: #4a5568; --button-bg: #2b6cb0; "
    "--button-fg: #fff; --good-bg: #1c4532; --good-fg: #c6f6d5; --plain-bg: #2d3748; "
    "--plain-fg: #e2e8f0; --alarm-bg: #63171b; --alarm-fg: #fed7d7;"
)
STYLE = (
    """
:root { color-scheme: light dark;
  --fg: #1a202c; --muted: #4a5568; --faint: #5f6b7a; --bg: #fff; --rule: #edf2f7;
  --border: #e2e8f0; --link: #0b6bcb; --bar: #3182ce; --track: #edf2f7; --ok: #276749;
  --bad: #c53030; --pending: #975a16; --notice-bg: #ebf8ff; --notice-border: #bee3f8;
  --above-bg: #fff5f5; --field-bg: #fff; --field-border: #a0aec0; --button-bg: #0b6bcb;
  --button-fg: #fff; --good-bg: #c6f6d5; --good-fg: #22543d; --plain-bg: #e2e8f0;
  --plain-fg: #2d3748; --alarm-bg: #fed7d7; --alarm-fg: #822727; }
"""
    # dark: as the UI around the frame shows itself (data-theme), else as the browser prefers
    + f"@media (prefers-color-scheme: dark) {{ :root:not([data-theme=light]) {{ {DARK} }} }}\n"
    + f":root[data-theme=dark] {{ {DARK} color-scheme: dark; }}\n"
    + ":root[data-theme=light] { color-scheme: light; }\n"
    + """body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0; padding: 20px 28px;
       overflow-wrap: anywhere; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 0 0 10px; }
a { color: var(--link); text-decoration: none; } a:hover { text-decoration: underline; }
.meta { color: var(--muted); margin: 0 0 16px; } footer.meta { margin: 8px 0 0; font-size: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(340px, 100%), 1fr));
        gap: 18px; margin-bottom: 18px; }
section { border: 1px solid var(--border); border-radius: 8px; padding: 14px 16px; min-width: 0;
          overflow-x: auto; }
body > section { margin-bottom: 18px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 10px 5px 0; border-bottom: 1px solid var(--rule);
         white-space: nowrap; }
th { color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase;
     letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tfoot td { font-weight: 600; border-bottom: none; }
.code { text-decoration: underline dotted var(--faint); cursor: help; white-space: normal; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; }
.current, .unlocked { background: var(--good-bg); color: var(--good-fg); }
.superseded { background: var(--plain-bg); color: var(--plain-fg); }
.locked { background: var(--alarm-bg); color: var(--alarm-fg); }
.ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
.pending { color: var(--pending); font-weight: 600; }
.above { color: var(--bad); font-weight: 600; background: var(--above-bg); padding: 0 4px;
         border-radius: 4px; }
.files a { display: inline-block; margin-right: 18px; } .empty { color: var(--faint); }
svg.chart { display: block; width: 100%; overflow: visible; }
.chart .bar { fill: var(--bar); } .chart .track { fill: var(--track); }
.chart text { font-size: 13px; fill: var(--fg); font-variant-numeric: tabular-nums; }
.nav { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 0 0 12px; font-size: 13px; }
.nav a[aria-current] { color: var(--fg); font-weight: 600; }
.scroll { overflow: auto; max-height: 70vh; } .scroll + h2 { margin-top: 16px; }
.scroll thead th { position: sticky; top: 0; background: var(--bg); }
.notice { background: var(--notice-bg); border: 1px solid var(--notice-border);
          border-radius: 6px; padding: 8px 12px; }
form.credit label { display: block; margin: 0 0 8px; } form.filter { margin: 0 0 10px; }
form.filter label { display: inline-block; margin: 0 12px 6px 0; }
.paging a { margin-right: 14px; }
input, select, button { font: inherit; padding: 3px 6px; max-width: 100%; box-sizing: border-box; }
input, select { color: var(--fg); background: var(--field-bg);
                border: 1px solid var(--field-border); border-radius: 4px; }
button { background: var(--button-bg); color: var(--button-fg); border: none; border-radius: 6px;
         padding: 4px 14px; }
@media (max-width: 600px) {
  body { padding: 12px; } section { padding: 10px 12px; } h1 { font-size: 19px; }
  .grid { gap: 12px; margin-bottom: 12px; } body > section { margin-bottom: 12px; } }
"""
)
# Every code a row of the pipeline can carry, in words (the code stays as the tooltip): the
# reasons of quarantined rows (validate.REASONS), of unbillable calls (rate), of calls in
# suspense (attribute), of duplicates and combined parts (not_billed, dedupe), and the kinds of
# non-billed rows. Row outcomes (read, billed, not_billable, ...) are report.OUTCOME_LABELS,
# the words the month's mail uses too.
PAGE_SCRIPT = """'use strict';
(() => {
  const root = document.documentElement;
  let ui = null;
  try { if (window.top !== window) { ui = window.top.document.documentElement; } } catch (e) {}
  const followTheme = () => {
    const theme = ui && ['dark', 'light'].find((name) => ui.classList.contains(name));
    if (theme) { root.dataset.theme = theme; } else { delete root.dataset.theme; }
  };
  if (ui) {
    followTheme();
    new MutationObserver(followTheme).observe(ui, { attributes: true, attributeFilter: ['class'] });
  }
  document.addEventListener('click', (event) => {
    const link = event.target.closest && event.target.closest('a[data-ui-href]');
    if (!ui || !link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey
        || event.altKey) { return; }
    const top = window.top;
    const target = new URL(link.getAttribute('href'), document.baseURI);
    if (target.origin !== top.location.origin) { return; }
    event.preventDefault();
    const state = top.history.state || {};
    const index = typeof state.idx === 'number' ? state.idx + 1 : 0;
    top.history.pushState({ usr: null, key: Math.random().toString(36).slice(2, 10), idx: index },
                          '', target.pathname + target.search + target.hash);
    top.dispatchEvent(new PopStateEvent('popstate', { state: top.history.state }));
  });
})();
"""
REASON_LABELS = {
    "BAD_FIELD_COUNT": "wrong number of fields",
    "BAD_CHARACTER": "control character in a field",
    "MISSING_TRANSACTION_ID": "transaction id missing",
    "MISSING_ACCOUNT": "account missing",
    "BAD_TIMESTAMP": "start time not a date and time",
    "NONEXISTENT_LOCAL_TIME": "start time skipped by the clock change",
    "AMBIGUOUS_LOCAL_TIME": "start time repeated by the clock change",
    "OUTSIDE_MONTH": "start time outside the month",
    "BAD_DURATION": "duration not in whole seconds",
    "DURATION_OUT_OF_RANGE": "duration out of range",
    "BAD_COMPLETION_STATUS": "unknown completion status",
    "BAD_NUMBER": "destination not a phone number",
    "BAD_REVENUE_SHARE": "revenue share not a percentage",
    "BAD_PART_NUMBER": "part number not a whole number",
    "BAD_COST": "cost not a number",
    "COST_OUT_OF_RANGE": "cost above the maximum",
    "NEGATIVE_COST": "negative cost, no credits allowed",
    "BAD_CURRENCY": "unknown currency",
    "NO_TARIFF_PREFIX": "no tariff for the number",
    "NO_RATE_AT_CALL_TIME": "no tariff price at the call's time",
    "UNKNOWN_ACCOUNT": "account unknown",
    "NOT_ENTITLED": "account not entitled",
    "NO_SEQUENCE_NUMBER": "no sequence number",
    "NO_CUSTOMER_ID": "no customer id",
    "DUPLICATE_TRANSACTION": "duplicate transaction",
    "PART_OF_SESSION": "part of a partial call",
    "duplicate": "duplicates",
}
CHART_ROW, CHART_TEXT, CHART_BAR = 40, 15, 12  # px: one customer, its label's baseline, its bar


def e(value: object) -> str:
    """Escape a value for HTML text and attributes."""
    return escape(str(value), quote=True)


def money(amount: Decimal, currency: str) -> str:
    """An exact amount with thousands separators and its currency."""
    return f"{amount:,} {currency}"


def minor_money(amount_minor: int, currency: str) -> str:
    """An amount in integer minor units, written as money() writes amounts."""
    from cdr_billing.money import from_minor_units

    return money(from_minor_units(amount_minor, currency), currency)


def number(count: int) -> str:
    """A count with thousands separators, as every page writes counts."""
    return f"{count:,}"


def minutes(seconds: int) -> str:
    """Seconds as minutes to a tenth (durations.minutes, as the month's mail), with separators."""
    from cdr_billing.durations import minutes as exact_minutes

    return f"{exact_minutes(seconds):,}"


@cache
def billing_zone() -> ZoneInfo:
    """The billing timezone (config billing.timezone), the zone months are cut in: every
    page shows its times there, as operators and finance read the month."""
    from cdr_billing.ui.web import config

    return ZoneInfo(config().billing.timezone)


def timestamp(moment: datetime, zone: ZoneInfo | None = None, seconds: bool = False) -> str:
    """A time in the billing timezone (or `zone`) with its abbreviation, to the minute (or the
    second), e.g. "2026-11-02 09:14 CET"; a time without a zone is UTC, as databases store it."""
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    shown = aware.astimezone(zone or billing_zone())
    return shown.strftime("%Y-%m-%d %H:%M:%S %Z" if seconds else "%Y-%m-%d %H:%M %Z")


def zone_note(zone: ZoneInfo | None = None) -> str:
    """Which zone the page's times are in, and its abbreviations, e.g. "Europe/Zurich
    (CET/CEST)"."""
    zone = zone or billing_zone()
    year = datetime.now(UTC).year
    names = dict.fromkeys(datetime(year, month, 1, tzinfo=zone).tzname() for month in (1, 7))
    return f"{zone.key} ({'/'.join(name for name in names if name)})"


def reason_label(code: str) -> str:
    """A reason code, row outcome or kind of non-billed row in words (an unknown code as is)."""
    if code in REASON_LABELS:
        return REASON_LABELS[code]
    from cdr_billing.report import OUTCOME_LABELS

    return OUTCOME_LABELS.get(code, code)


def reason(code: str) -> str:
    """A code in words, the code itself as its tooltip."""
    return f'<span class="code" title="{e(code)}">{e(reason_label(code))}</span>'


def nav(prefix: str, current: str) -> str:
    """The Billing pages' navigation; `prefix` leads from the page's folder to /billing/."""
    links = [
        ("", "Billing months"),
        ("runs", "Months tried"),
        ("prepaid", "Prepaid accounts"),
        ("prepaid/outbox", "Outbox"),
    ]
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


def page(title: str, body: str, style: str = "", times: bool = True) -> str:
    """A whole HTML document; `style`: the CSS of one kind of page, after the common one;
    `times`: whether a footer names the timezone of the page's times."""
    footer = f'<footer class="meta">Times in {e(zone_note())}.</footer>' if times else ""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<script>{PAGE_SCRIPT}</script>"
        f"<style>{STYLE}{style}</style></head><body>{body}{footer}</body></html>\n"
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
    """A table of already escaped cells; columns in `numeric` are right-aligned. In a card
    (section) or .scroll, a table wider than the screen scrolls there, not the page."""

    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f"<{tag}{' class=num' if i in numeric else ''}>{value}</{tag}>"
            for i, value in enumerate(values)
        )

    head = f"<thead><tr>{cells('th', [e(h) for h in headers])}</tr></thead>"
    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    foot = f"<tfoot><tr>{cells('td', footer)}</tr></tfoot>" if footer else ""
    return f"<table>{head}<tbody>{body}</tbody>{foot}</table>"


def months_page(months: list[MonthSummary], notice: str = "") -> str:
    """The list of billed months: status, current batch, totals and row counts; `notice`: the
    months not billed (runs_pages.attention)."""
    intro = (
        nav("", "Billing months") + "<h1>Billing</h1><p class=meta>Months in the billing database. "
        "Status is that of the month's newest batch; "
        "totals and row counts are those of the current batch.</p>" + notice
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
                e(number(month.batch_count)),
                e(number(month.line_count)),
                totals,
                *(
                    [e(number(current.count(name))) for name in MONTH_LIST_COUNTS]
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


def message_page(title: str, text: str, link: tuple[str, str] | None = None) -> str:
    """A short page for errors: not found, not logged in, not allowed."""
    action = f'<p><a href="{e(link[0])}">{e(link[1])}</a></p>' if link else ""
    return page(title, f"<h1>{e(title)}</h1><p>{e(text)}</p>{action}", times=False)
