"""The drill-down pages of a billing month: its lines (with a CSV download), a customer, a line's
users, a user's calls with their CDR file and row; the unbillable and suspense groups with
their rows.

Links are relative: each page knows the way from its folder up to the month's folder
(month/<YYYY-MM>/), and every id in a link is one percent-encoded path segment. Account ids that
look like phone numbers are shown masked (cdr_billing.privacy); the link keeps the id, which the
page needs to find the account. Minutes are the mail's (durations.minutes).

The month page links here with month_links() (a card), customer_href() and group_href().
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from cdr_billing import privacy
from cdr_billing.ui.drill_queries import (
    CallsPage,
    CurrencyTotal,
    Group,
    GroupRowsPage,
    GroupsPage,
    Line,
    LinesPage,
    UsersPage,
)
from cdr_billing.ui.pages import (
    e,
    minor_money,
    minutes,
    nav,
    number,
    page,
    reason,
    table,
    timestamp,
)
from cdr_billing.ui.sealed_ids import id_segment

KIND_TITLES = {"unbillable": "Unbillable calls", "suspense": "Calls in suspense"}
KIND_KEYS = {"unbillable": "Number range", "suspense": "Account"}
DRILL_STYLE = """
.crumbs { font-size: 13px; margin: 0 0 8px; } .crumbs a { margin-right: 4px; }
.actions a { display: inline-block; margin-right: 18px; }
"""


def segment(value: str) -> str:
    """An id as one URL path segment: every reserved character percent-encoded."""
    return quote(value, safe="")


def shown_id(value: str) -> str:
    """An account or user id as a page shows it: masked when it looks like a phone number."""
    return privacy.shown_id(value) or "unknown"


def minutes_text(seconds: int | None) -> str:
    """Minutes as the mail gives them, with thousands separators ("" when not recorded)."""
    return "" if seconds is None else minutes(seconds)


def customer_path(customer_id: str) -> str:
    """A customer's page, from the month's folder."""
    return f"customer/{id_segment(customer_id)}"


def line_path(line: Line) -> str:
    """A line's page (its users), from the month's folder."""
    return (
        f"{customer_path(line.customer_id)}/line/{segment(line.sequence_number)}/"
        f"{segment(line.currency)}"
    )


def user_path(line: Line, user_id: str) -> str:
    """A user's calls in a line, from the month's folder."""
    return f"{line_path(line)}/user/{id_segment(user_id)}"


def groups_path(kind: str) -> str:
    """A kind's groups (unbillable or suspense), from the month's folder."""
    return f"not-billed/{segment(kind)}"


def group_path(group: Group) -> str:
    """A group's rows, from the month's folder (an empty key is an empty last segment)."""
    return f"{groups_path(group.kind)}/{segment(group.reason_code)}/{id_segment(group.key)}"


def month_links(billing_month: str, statement_count: int) -> str:
    """A card for the month page (month/<YYYY-MM>): its lines, the download, the groups and, for
    the customers who opted in, the users' statements."""
    month = segment(billing_month)
    statements = f"{month}/statements", f"The users' statements ({number(statement_count)})"
    links = [
        (f"{month}/lines", "Billing lines per customer and sequence number"),
        (f"{month}/lines.csv", "Download the lines (CSV)"),
        (f"{month}/{groups_path('unbillable')}", "Unbillable calls by number range"),
        (f"{month}/{groups_path('suspense')}", "Calls in suspense by account"),
    ] + ([statements] if statement_count else [])
    items = "".join(f'<a href="{e(href)}">{e(text)}</a>' for href, text in links)
    return f'<section><h2>Lines and calls</h2><p class="actions">{items}</p></section>'


def customer_href(billing_month: str, customer_id: str) -> str:
    """The link from the month page (month/<YYYY-MM>) to a customer's lines."""
    return f"{segment(billing_month)}/{customer_path(customer_id)}"


def group_href(billing_month: str, kind: str, reason_code: str, key: str) -> str:
    """The link from the month page (month/<YYYY-MM>) to a non-billed group's rows."""
    return f"{segment(billing_month)}/{group_path(Group(kind, reason_code, key, 0, None))}"


def _link(href: str, text: str) -> str:
    return f'<a href="{e(href)}">{e(text)}</a>'


def _head(billing_month: str, root: str, title: str, crumbs: list[tuple[str, str]]) -> str:
    """Navigation, the way back (month, then each level above) and the heading."""
    way = [(f"{root}../{segment(billing_month)}", f"Month {billing_month}"), *crumbs]
    links = " &rsaquo; ".join(_link(href, text) for href, text in way)
    return f'{nav(root + "../../", "")}<p class="crumbs">{links}</p><h1>{e(title)}</h1>'


def _document(title: str, body: str) -> str:
    return page(title, body, style=DRILL_STYLE)


def _calls_section(calls_table: str, shown: Sequence[Any], more: bool, first: bool) -> str:
    """A card of calls in CDR file and row order, paged on from the last one shown (its file
    and row)."""
    last = shown[-1] if shown else None
    query = {"file": last.source_file, "row": last.source_row} if last else {}
    return (
        f'<section><h2>Calls</h2><div class="scroll">{calls_table}</div>'
        f"{_paging(first, more, query)}</section>"
    )


def _paging(first: bool, more: bool, query: dict[str, str | int]) -> str:
    """Links to the first page (when not on it) and the next (when there is one)."""
    links = [] if first else ['<a href="?">First page</a>']
    if more:
        links.append(f'<a href="?{e(urlencode(query))}">Next page</a>')
    return f'<p class="paging">{"".join(links)}</p>' if links else ""


def _line_cells(root: str, line: Line, with_customer: bool) -> list[str]:
    cells = [_link(root + line_path(line), line.sequence_number), e(line.currency)]
    if with_customer:
        cells.insert(0, _link(root + customer_path(line.customer_id), line.customer_id))
    return cells + [
        e(number(line.calls)),
        e(minutes_text(line.seconds)),
        e(minor_money(line.total_minor, line.currency)),
    ]


def _totals_table(totals: list[CurrencyTotal]) -> str:
    rows = [
        [
            e(total.currency),
            e(number(total.lines)),
            e(number(total.calls)),
            e(minutes_text(total.seconds)),
            e(minor_money(total.total_minor, total.currency)),
        ]
        for total in totals
    ]
    return table(["Currency", "Lines", "Calls", "Minutes", "Total"], rows, numeric={1, 2, 3, 4})


def lines_page(billing_month: str, lines: LinesPage, first: bool) -> str:
    """month/<YYYY-MM>/lines: the batch's lines per (customer, sequence number, currency)."""
    root = ""
    title = f"Billing lines {billing_month}"
    body = (
        _head(billing_month, root, title, [])
        + f'<p class="meta">Current batch {e(lines.batch_id)}: one line per customer, sequence '
        'number and currency. <a href="lines.csv">Download all lines (CSV)</a></p>'
        + f"<section><h2>Totals</h2>{_totals_table(lines.totals)}</section>"
    )
    if not lines.lines:
        body += '<section><p class="empty">The batch has no billing lines.</p></section>'
        return _document(title, body)
    rows = [_line_cells(root, line, with_customer=True) for line in lines.lines]
    headers = ["Customer", "Sequence number", "Currency", "Calls", "Minutes", "Total"]
    last = lines.lines[-1]
    query = {
        "customer": last.customer_id,
        "sequence": last.sequence_number,
        "currency": last.currency,
    }
    body += (
        f'<section><h2>Lines</h2><div class="scroll">{table(headers, rows, numeric={3, 4, 5})}'
        f"</div>{_paging(first, lines.more, query)}</section>"
    )
    return _document(title, body)


def customer_page(billing_month: str, customer_id: str, lines: list[Line]) -> str:
    """month/<YYYY-MM>/customer/<id>: the customer's sequence numbers."""
    root = "../"
    title = f"Customer {customer_id}, {billing_month}"
    rows = [_line_cells(root, line, with_customer=False) for line in lines]
    headers = ["Sequence number", "Currency", "Calls", "Minutes", "Total"]
    body = (
        _head(billing_month, root, title, [(f"{root}lines", "Lines")])
        + f'<section><h2>Sequence numbers</h2><div class="scroll">'
        f"{table(headers, rows, numeric={2, 3, 4})}</div></section>"
    )
    return _document(title, body)


def _line_crumbs(root: str, line: Line) -> list[tuple[str, str]]:
    return [
        (f"{root}lines", "Lines"),
        (root + customer_path(line.customer_id), f"Customer {line.customer_id}"),
    ]


def _line_meta(line: Line) -> str:
    return (
        f'<p class="meta">{e(number(line.calls))} calls, {e(minutes_text(line.seconds))} '
        f"minutes, {e(minor_money(line.total_minor, line.currency))}.</p>"
    )


def users_page(billing_month: str, users: UsersPage, first: bool) -> str:
    """month/<YYYY-MM>/customer/<id>/line/<sequence number>/<currency>: the line's users."""
    root, line = "../../../../", users.line
    title = f"Line {line.customer_id} / {line.sequence_number} ({line.currency}), {billing_month}"
    rows = [
        [
            _link(root + user_path(line, user.user_id), shown_id(user.user_id)),
            e(number(user.calls)),
            e(minutes_text(user.seconds)),
            e(minor_money(user.total_minor, line.currency)),
        ]
        for user in users.users
    ]
    paging = _paging(first, users.more, {"after": users.users[-1].user_id} if users.users else {})
    body = (
        _head(billing_month, root, title, _line_crumbs(root, line))
        + _line_meta(line)
        + '<section><h2>Users</h2><div class="scroll">'
        + table(["User", "Calls", "Minutes", "Total"], rows, numeric={1, 2, 3})
        + f"</div>{paging}</section>"
    )
    return _document(title, body)


def calls_page(billing_month: str, calls: CallsPage, first: bool) -> str:
    """.../line/<sequence number>/<currency>/user/<id>: the user's calls in the line, each with
    the CDR file and row it came from."""
    root, line, user = "../../../../../../", calls.line, calls.user
    shown = shown_id(user.user_id)
    title = f"Calls of {shown}, line {line.customer_id} / {line.sequence_number}, {billing_month}"
    crumbs = [
        *_line_crumbs(root, line),
        (root + line_path(line), f"Line {line.sequence_number} ({line.currency})"),
    ]
    rows = [
        [
            e(call.source_file),
            e(number(call.source_row)),
            e(call.combined_rows),
            e(timestamp(call.start_utc, seconds=True)),
            e(number(call.seconds)),
            e(minor_money(call.cost_minor, line.currency)),
            e(call.pricing),
            e(call.transaction_id),
        ]
        for call in calls.calls
    ]
    headers = [
        "CDR file",
        "Row",
        "Merged rows",
        "Start",
        "Seconds",
        "Cost",
        "Pricing",
        "Transaction",
    ]
    meta = (
        f'<p class="meta">{e(number(user.calls))} calls, {e(minutes_text(user.seconds))} minutes, '
        f"{e(minor_money(user.total_minor, line.currency))}, in CDR file and row order.</p>"
    )
    listing = _calls_section(
        table(headers, rows, numeric={1, 4, 5}), calls.calls, calls.more, first
    )
    return _document(title, _head(billing_month, root, title, crumbs) + meta + listing)


def groups_page(billing_month: str, groups: GroupsPage) -> str:
    """month/<YYYY-MM>/not-billed/<kind>: the kind's groups, most calls first."""
    root, kind = "../", groups.kind
    title = f"{KIND_TITLES[kind]}, {billing_month}"
    rows = [
        [
            reason(group.reason_code),
            _link(root + group_path(group), shown_id(group.key)),
            e(number(group.calls)),
            e(minutes_text(group.seconds)),
        ]
        for group in groups.groups
    ]
    meta = (
        f'<p class="meta">{e(number(groups.calls))} calls, '
        f"{e(minutes_text(groups.seconds) or 'unknown')} minutes, not billed.</p>"
    )
    if groups.groups:
        headers = ["Reason", KIND_KEYS[kind], "Calls", "Minutes"]
        listing = f'<div class="scroll">{table(headers, rows, numeric={2, 3})}</div>'
    else:
        listing = f'<p class="empty">No {e(KIND_TITLES[kind].lower())}.</p>'
    links = [] if groups.page == 0 else ['<a href="?">First page</a>']
    if groups.more:
        links.append(f'<a href="?page={groups.page + 1}">Next page</a>')
    paging = f'<p class="paging">{"".join(links)}</p>' if links else ""
    body = (
        _head(billing_month, root, title, [])
        + meta
        + f"<section><h2>{e(KIND_KEYS[kind])}s</h2>{listing}{paging}</section>"
    )
    return _document(title, body)


def group_rows_page(billing_month: str, rows: GroupRowsPage, first: bool) -> str:
    """month/<YYYY-MM>/not-billed/<kind>/<reason>/<key>: the group's rows with file and row."""
    root, group = "../../../", rows.group
    shown = shown_id(group.key)
    title = f"{KIND_TITLES[group.kind]}: {shown}, {billing_month}"
    crumbs = [(root + groups_path(group.kind), KIND_TITLES[group.kind])]
    table_rows = [
        [
            e(row.source_file),
            e(number(row.source_row)),
            e(minutes_text(row.seconds)),
            e(row.number_range),
            e(shown_id(row.user_id) if row.user_id else ""),
            e(row.transaction_id),
        ]
        for row in rows.rows
    ]
    headers = ["CDR file", "Row", "Minutes", "Number range", "Account", "Transaction"]
    meta = (
        f'<p class="meta">{reason(group.reason_code)}: {e(number(group.calls))} calls, '
        f"{e(minutes_text(group.seconds) or 'unknown')} minutes.</p>"
    )
    listing = _calls_section(
        table(headers, table_rows, numeric={1, 2}), rows.rows, rows.more, first
    )
    return _document(title, _head(billing_month, root, title, crumbs) + meta + listing)
