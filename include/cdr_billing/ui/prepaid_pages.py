"""The Prepaid pages' HTML, in the Billing page's look (pages.py): server-rendered tables in
cards, no script. Account ids are often phone numbers: shown as stored (operators need them),
escaped in text and percent-encoded as one path segment in every link. Links are relative:

    /billing/prepaid                   -> prepaid/account/<id>, prepaid/outbox
    /billing/prepaid/account/<id>      -> ../../prepaid, ../outbox, <id>/credit (the form)
    /billing/prepaid/outbox            -> ../prepaid, account/<id>
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from cdr_billing.ui.pages import e, minor_money, nav, number, page, table, timestamp
from cdr_billing.ui.sealed_ids import id_segment

if TYPE_CHECKING:
    from cdr_billing.ui.prepaid_queries import (
        AccountDetail,
        AccountsPage,
        AccountSummary,
        EntryBrief,
        ExposureRun,
        LedgerPage,
        OutboxPage,
    )

# What an operator may record from the account page (refunds and adjustments: the command).
FORM_KINDS = ("topup", "credit")
MAX_AMOUNT_TEXT = 32
MAX_REASON = 500
ERROR_SHOWN = 300  # characters of a delivery's last error shown


@dataclass(frozen=True)
class CreditForm:
    """What the account page's form carries: its idempotency key and CSRF token, and who
    posts (the logged-in Airflow user)."""

    key: str
    csrf_token: str
    operator: str


def moment(value: datetime | None) -> str:
    """A time in the billing timezone to the second (ledger and deliveries), or empty."""
    return "" if value is None else timestamp(value, seconds=True)


def scroll(content: str) -> str:
    """A table that scrolls inside its card instead of widening the page."""
    return f'<div class="scroll">{content}</div>'


def card(title: str, content: str) -> str:
    return f"<section><h2>{e(title)}</h2>{content}</section>"


def empty(text: str) -> str:
    return f'<p class="empty">{e(text)}</p>'


def line_badge(locked: bool) -> str:
    return (
        '<span class="badge locked">locked</span>'
        if locked
        else '<span class="badge unlocked">unlocked</span>'
    )


def _brief(entry: EntryBrief | None, currency: str) -> str:
    if entry is None:
        return '<span class="empty">none</span>'
    return f"{e(minor_money(entry.amount_minor, currency))}<br>{e(timestamp(entry.created_at))}"


def _state_cell(account: AccountSummary) -> str:
    state = account.state
    since = f"<br>since {e(timestamp(state.since))}" if state.since else ""
    inactive = ' <span class="badge superseded">inactive</span>' if not account.active else ""
    return f"{line_badge(state.locked)}{inactive}{since}"


def _topups_cell(account: AccountSummary) -> str:
    if not account.topups:
        return ""
    return "<br>".join(
        f'<span class="{"bad" if t.status == "declined" else "pending"}">{e(t.status)}</span> '
        f"{e(minor_money(t.amount_minor, t.currency))} "
        f"{e(timestamp(t.resolved_at or t.requested_at))}"
        for t in account.topups
    )


def _exposure_cell(account: AccountSummary) -> str:
    exposure = account.exposure
    if exposure is None:
        return ""
    amount = e(minor_money(exposure.at_risk_minor, account.currency))
    return f'<span class="above">{amount}</span>' if exposure.above_limit else amount


def _exposure_section(run: ExposureRun | None) -> str:
    if run is None:
        return card("Exposure", empty("No prepaid run has measured the exposure yet."))
    rows = [
        [
            e(c.currency),
            e(number(c.accounts)),
            e(minor_money(c.bound_minor, c.currency)),
            e(minor_money(c.undebited_minor, c.currency)),
            e(minor_money(c.bound_minor + c.undebited_minor, c.currency)),
            e(minor_money(c.limit_minor, c.currency)) if c.limit_minor is not None else "none",
            f'<span class="above">{e(number(c.above_limit))}</span>' if c.above_limit else "0",
        ]
        for c in run.currencies
    ]
    totals = table(
        ["Currency", "Accounts", "Bound", "Undebited", "At risk", "Limit", "Above limit"],
        rows,
        numeric={1, 2, 3, 4, 5, 6},
    )
    above = [
        [
            _account_link(r.account_id, "prepaid/account/"),
            e(minor_money(r.bound_minor, c.currency)),
            e(minor_money(r.undebited_minor, c.currency)),
            f'<span class="above">{e(minor_money(r.at_risk_minor, c.currency))}</span>',
        ]
        for c in run.currencies
        for r in c.largest_above
    ]
    listed = (
        "<h2>Accounts above the limit (largest first)</h2>"
        + scroll(table(["Account", "Bound", "Undebited", "At risk"], above, numeric={1, 2, 3}))
        if above
        else ""
    )
    meta = (
        f"<p class=meta>Run <code>{e(run.run_id)}</code>, computed "
        f"{e(timestamp(run.computed_at))}. Bound = 2 &times; concurrent calls &times; longest "
        "call &times; average price per minute; undebited = calls rated but not yet debited.</p>"
    )
    return card("Exposure of the latest run", meta + scroll(totals) + listed)


def _account_link(account_id: str, prefix: str) -> str:
    return f'<a href="{e(prefix + id_segment(account_id))}">{e(account_id)}</a>'


def _filter_form(listing: AccountsPage) -> str:
    checked = " checked" if listing.locked_only else ""
    return (
        '<form class="filter" method="get" action="prepaid">'
        '<label>From account <input name="start" maxlength="128" '
        f'value="{e(listing.start or "")}"></label> '
        f'<label><input type="checkbox" name="locked" value="1"{checked}> locked only</label> '
        '<button type="submit">Show</button></form>'
    )


def _paging(listing: AccountsPage) -> str:
    links = []
    if listing.start is not None:
        first = {"locked": "1"} if listing.locked_only else {}
        links.append(f'<a href="prepaid{e("?" + urlencode(first) if first else "")}">First</a>')
    if listing.next_start is not None:
        query = {"start": listing.next_start, **({"locked": "1"} if listing.locked_only else {})}
        links.append(f'<a href="prepaid?{e(urlencode(query))}">Next &rarr;</a>')
    return f'<p class="paging">{" ".join(links)}</p>' if links else ""


def accounts_page(listing: AccountsPage) -> str:
    """Every prepaid account, a page at a time: balance, line, last debit and top-up, top-ups
    in flight or declined, exposure; and the latest run's exposure per currency."""
    intro = (
        nav("", "Prepaid accounts") + "<h1>Prepaid accounts</h1><p class=meta>"
        f"{e(number(listing.total))} accounts, {e(number(listing.locked))} lines locked. "
        "Balances and lines as the last prepaid run or operator left them.</p>"
    )
    rows = [
        [
            _account_link(a.account_id, "prepaid/account/"),
            e(minor_money(a.balance_minor, a.currency)),
            _state_cell(a),
            _brief(a.last_debit, a.currency),
            _brief(a.last_topup, a.currency),
            _topups_cell(a),
            _exposure_cell(a),
        ]
        for a in listing.accounts
    ]
    headers = ["Account", "Balance", "Line", "Last debit", "Last top-up", "Top-ups", "At risk"]
    accounts = (
        scroll(table(headers, rows, numeric={1, 6}))
        if rows
        else empty("No prepaid account matches.")
    )
    body = (
        intro
        + _exposure_section(listing.exposure)
        + card("Accounts", _filter_form(listing) + accounts + _paging(listing))
    )
    return page("Prepaid accounts", body)


# ---------------------------------------------------------------------------------------------
# An account's page

SETTING_LABELS = {
    "currency": "Currency",
    "low_balance_minor": "Low balance (top-up below)",
    "topup_minor": "Top-up amount",
    "lock_level_minor": "Lock at or below",
    "unlock_level_minor": "Unlock above",
    "payment_method_ref": "Payment method",
    "max_concurrent_calls": "Max concurrent calls",
    "active": "Active",
}


def _setting(name: str, value: Any, currency: str) -> str:
    if name.endswith("_minor") and isinstance(value, int):
        return minor_money(value, currency)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _settings_section(detail: AccountDetail) -> str:
    account = detail.account
    currency = account["currency"]
    rows = [[e(label), e(_setting(n, account[n], currency))] for n, label in SETTING_LABELS.items()]
    current = table(["Setting", "Value"], rows, numeric=set())
    history = []
    for change in detail.changes:
        try:
            settings = json.loads(change["settings"])
        except ValueError:
            settings = {}
        summary = ", ".join(
            f"{n}={_setting(n, settings[n], settings.get('currency', currency))}"
            for n in SETTING_LABELS
            if n in settings
        )
        history.append(
            [e(moment(change["changed_at"])), e(change["changed_by"]), f"<small>{e(summary)}"]
        )
    changes = (
        "<h2>Changes (newest first)</h2>"
        + scroll(table(["Changed at", "By", "Settings after"], history, numeric=set()))
        if history
        else ""
    )
    return card("Settings", scroll(current) + changes)


def _entry_source(entry: Any) -> str:
    if entry.call_key is None and entry.source_file is None:
        return ""
    source = (
        f"<br><small>{e(entry.source_file)} row {e(entry.source_row)}</small>"
        if entry.source_file
        else ""
    )
    return f"<code>{e(entry.call_key or '')}</code>{source}"


def _ledger_section(ledger: LedgerPage, account: dict[str, Any], link: str) -> str:
    currency = account["currency"]
    rows = [
        [
            e(entry.entry_id),
            e(moment(entry.created_at)),
            e(entry.kind),
            e(minor_money(entry.amount_minor, currency)),
            e(minor_money(entry.balance_after_minor, currency)),
            _entry_source(entry),
            e(entry.reason or ""),
            e(entry.created_by),
        ]
        for entry in ledger.entries
    ]
    headers = ["Entry", "Time", "Kind", "Amount", "Balance after", "Call / source", "Reason", "By"]
    listed = scroll(table(headers, rows, numeric={0, 3, 4})) if rows else empty("No entries.")
    links = []
    if ledger.before is not None:
        links.append(f'<a href="{e(link)}">Newest</a>')
    if ledger.older_before is not None:
        links.append(f'<a href="{e(link)}?before={e(ledger.older_before)}">Older &rarr;</a>')
    paging = f'<p class="paging">{" ".join(links)}</p>' if links else ""
    return card("Ledger (newest first)", listed + paging)


def _locks_section(events: list[dict[str, Any]], currency: str) -> str:
    rows = [
        [
            e(event["event_id"]),
            e(moment(event["created_at"])),
            line_badge(event["state"] == "locked"),
            e("LOCK" if event["state"] == "locked" else "UNLOCK"),
            e(minor_money(event["balance_minor"], currency)),
            e(event["reason"]),
            e(event["created_by"]),
        ]
        for event in events
    ]
    headers = ["Event", "Time", "Line", "Action", "Balance", "Reason", "By"]
    listed = scroll(table(headers, rows, numeric={0, 4})) if rows else empty("Never locked.")
    return card("Lock history (newest first)", listed)


def _topups_section(topups: list[dict[str, Any]]) -> str:
    rows = [
        [
            e(t["request_id"]),
            e(moment(t["requested_at"])),
            e(minor_money(t["amount_minor"], t["currency"])),
            f'<span class="{"bad" if t["status"] == "declined" else ""}">{e(t["status"])}</span>',
            e(number(t["attempts"])),
            e(moment(t["resolved_at"])),
            e(t["gateway_reference"] or ""),
            e(t["detail"] or ""),
        ]
        for t in topups
    ]
    headers = ["Request", "Requested", "Amount", "Status", "Attempts", "Resolved", "Reference"]
    listed = (
        scroll(table([*headers, "Detail"], rows, numeric={0, 2, 4}))
        if rows
        else empty("No top-up requested.")
    )
    return card("Top-up requests (newest first)", listed)


def delivery_status(delivery: dict[str, Any]) -> str:
    """delivered, failing (tried and refused) or pending (not tried yet)."""
    if delivery.get("delivered_at") is not None:
        return "delivered"
    return "failing" if delivery["attempts"] > 0 or delivery["last_error"] else "pending"


def _status_cell(delivery: dict[str, Any]) -> str:
    status = delivery_status(delivery)
    kind = {"delivered": "ok", "failing": "bad", "pending": "pending"}[status]
    return f'<span class="{kind}">{e(status)}</span>'


def _error_cell(delivery: dict[str, Any]) -> str:
    error = delivery["last_error"] or ""
    shown = error if len(error) <= ERROR_SHOWN else error[:ERROR_SHOWN] + "…"
    return f"<small>{e(shown)}</small>"


def _deliveries_section(deliveries: list[dict[str, Any]]) -> str:
    rows = [
        [
            e(d["event_id"]),
            e(d["action"]),
            _status_cell(d),
            e(moment(d["created_at"])),
            e(moment(d["delivered_at"])),
            e(number(d["attempts"])),
            e(moment(d["next_attempt_at"])) if d["delivered_at"] is None else "",
            _error_cell(d),
        ]
        for d in deliveries
    ]
    headers = ["Event", "Action", "Status", "Written", "Delivered", "Attempts", "Next attempt"]
    listed = (
        scroll(table([*headers, "Last error"], rows, numeric={0, 5}))
        if rows
        else empty("Nothing sent to the switch.")
    )
    return card("Switch deliveries (newest first)", listed)


def _credit_form(account: dict[str, Any], link: str, form: CreditForm | None) -> str:
    if form is None:
        return card(
            "Record a top-up or credit",
            empty(
                "Your Airflow user may not post to prepaid balances (it needs edit access to "
                "the runs of cdr_prepaid_balances)."
            ),
        )
    currency = account["currency"]
    options = "".join(
        f'<option value="{e(kind)}">{e("top-up" if kind == "topup" else kind)}</option>'
        for kind in FORM_KINDS
    )
    return card(
        "Record a top-up or credit",
        f'<form class="credit" method="post" action="{e(link)}/credit">'
        f'<input type="hidden" name="key" value="{e(form.key)}">'
        f'<input type="hidden" name="csrf_token" value="{e(form.csrf_token)}">'
        f'<label>Kind <select name="kind">{options}</select></label>'
        f'<label>Amount ({e(currency)}) <input name="amount" required inputmode="decimal" '
        f'maxlength="{MAX_AMOUNT_TEXT}" placeholder="20.00"></label>'
        f'<label>Reason <input name="reason" required maxlength="{MAX_REASON}" size="40"></label>'
        '<button type="submit">Record</button></form>'
        f"<p class=meta>Posted as Airflow user <b>{e(form.operator)}</b>, once per form (a second "
        "submit of the same form posts nothing); the lock rules run in the same transaction.</p>",
    )


def _notice(posted: dict[str, Any] | None, repeated: bool, currency: str) -> str:
    if posted is None:
        return ""
    what = (
        f"{posted['kind']} {minor_money(posted['amount_minor'], currency)} "
        f"(entry {posted['entry_id']}, by {posted['created_by']})"
    )
    text = (
        f"This form was already submitted: {what}; nothing was posted again."
        if repeated
        else f"Recorded {what}."
    )
    return f'<p class="notice">{e(text)}</p>'


def account_page(
    detail: AccountDetail,
    form: CreditForm | None,
    posted: dict[str, Any] | None = None,
    repeated: bool = False,
) -> str:
    """An account: balance and line, the form, settings and their history, ledger, lock
    history, top-up requests and switch deliveries."""
    account = detail.account
    account_id, currency = account["account_id"], account["currency"]
    link = id_segment(account_id)
    state = (
        f"Balance <b class=balance>{e(minor_money(account['balance_minor'], currency))}</b>, "
        f"line {line_badge(account['locked'])}, updated {e(moment(account['updated_at']))}"
        + ("" if account["active"] else ' <span class="badge superseded">inactive</span>')
    )
    body = (
        nav("../../", "")
        + f"<h1>Prepaid account {e(account_id)}</h1><p class=meta>{state}</p>"
        + _notice(posted, repeated, currency)
        + f'<div class="grid">{_credit_form(account, link, form)}{_settings_section(detail)}</div>'
        + _ledger_section(detail.ledger, account, link)
        + f'<div class="grid">{_locks_section(detail.lock_events, currency)}'
        + f"{_topups_section(detail.topups)}</div>"
        + _deliveries_section(detail.deliveries)
    )
    return page(f"Prepaid account {account_id}", body)


def outbox_page(outbox: OutboxPage) -> str:
    """The switch events not delivered yet: pending (not tried) or failing (refused or
    unreachable, retried with backoff)."""
    rows = [
        [
            e(d["outbox_id"]),
            _account_link(d["account_id"], "account/"),
            e(d["event_id"]),
            e(d["action"]),
            _status_cell(d),
            e(moment(d["created_at"])),
            e(number(d["attempts"])),
            e(moment(d["next_attempt_at"])),
            _error_cell(d),
        ]
        for d in outbox.deliveries
    ]
    headers = ["Outbox", "Account", "Event", "Action", "Status", "Written", "Attempts"]
    listed = (
        scroll(table([*headers, "Next attempt", "Last error"], rows, numeric={0, 2, 6}))
        if rows
        else empty("Every lock and unlock has been delivered to the switch.")
    )
    paging = []
    if outbox.after is not None:
        paging.append('<a href="outbox">First</a>')
    if outbox.next_after is not None:
        paging.append(f'<a href="outbox?after={e(outbox.next_after)}">Next &rarr;</a>')
    body = (
        nav("../", "Outbox")
        + "<h1>Switch outbox</h1><p class=meta>Lock and unlock events the switch has not "
        "accepted yet, oldest first. Each account's events are delivered in order: a failing "
        "event holds back the account's later ones.</p>"
        + card(
            "Pending and failing deliveries",
            listed + (f'<p class="paging">{" ".join(paging)}</p>' if paging else ""),
        )
    )
    return page("Switch outbox", body)


def form_error_page(title: str, text: str, back: str) -> str:
    """A refused form: what was wrong (bounded, escaped) and the way back to the account."""
    return page(
        title,
        f'<h1>{e(title)}</h1><p>{e(text)}</p><p><a href="{e(back)}">&larr; Back to the '
        "account</a></p>",
        times=False,
    )
