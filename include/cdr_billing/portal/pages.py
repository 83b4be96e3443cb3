"""The portal's HTML: plain pages with forms, no script (the content policy allows none), every
value escaped. Amounts in the account's currency, times in the billing timezone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from html import escape
from zoneinfo import ZoneInfo

from cdr_billing.database import in_utc
from cdr_billing.money import from_minor_units
from cdr_billing.portal.auth import LINK_LIFETIME
from cdr_billing.portal.oidc import START_PATH
from cdr_billing.portal.queries import Line, MonthCalls, Overview

STYLE = """
:root { color-scheme: light dark; --line: #d0d7de; --muted: #57606a; --accent: #0969da;
  --ok: #1a7f37; --bad: #cf222e; --card: #ffffff; --page: #f6f8fa; }
@media (prefers-color-scheme: dark) { :root { --line: #30363d; --muted: #8b949e;
  --accent: #4493f8; --ok: #3fb950; --bad: #f85149; --card: #161b22; --page: #0d1117; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, sans-serif; background: var(--page); }
header { display: flex; justify-content: space-between; align-items: center; gap: 1rem;
  padding: .8rem 1.5rem; border-bottom: 1px solid var(--line); background: var(--card); }
header h1 { font-size: 1.1rem; margin: 0; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 1rem 1.25rem; margin: 1rem 0; }
h2 { font-size: 1.05rem; margin: 0 0 .6rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.balance { font-size: 1.6rem; font-weight: 600; }
.state { display: inline-block; padding: .1rem .6rem; border-radius: 1rem; font-weight: 600;
  border: 1px solid currentColor; }
.locked { color: var(--bad); } .unlocked { color: var(--ok); }
.approved { color: var(--ok); } .declined, .bad { color: var(--bad); }
form.inline { display: inline; }
button, input[type=email] { font: inherit; padding: .4rem .8rem; border-radius: 6px;
  border: 1px solid var(--line); }
button { background: var(--accent); color: #fff; border-color: var(--accent); cursor: pointer; }
button.quiet { background: transparent; color: var(--accent); }
a.button { display: inline-block; padding: .4rem .8rem; border-radius: 6px; color: #fff;
  background: var(--accent); text-decoration: none; }
input[type=email] { width: min(100%, 24rem); }
.choices label { margin-right: 1rem; }
a { color: var(--accent); }
"""


@dataclass(frozen=True)
class TopupForm:
    """The top-up form of one line: its key (the request's idempotency key) and CSRF token."""

    line: Line
    key: str
    csrf_token: str
    choices: tuple[int, ...]  # amounts, minor units


def money(minor: int, currency: str) -> str:
    return f"{from_minor_units(int(minor), currency)} {currency}"


def local_time(moment: datetime | None, timezone: str) -> str:
    if moment is None:
        return ""
    return in_utc(moment).astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M")


def _sign_out(csrf_token: str) -> str:
    return (
        '<form class="inline" method="post" action="/sign-out">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf_token)}">'
        '<button class="quiet" type="submit">Sign out</button></form>'
    )


def page(title: str, body: str, signed_in: str = "", sign_out_token: str = "") -> str:
    """A whole page; `signed_in` (the address) adds it and a sign-out button to the header."""
    who = (
        f'<span><span class="muted">{escape(signed_in)}</span> {_sign_out(sign_out_token)}</span>'
        if signed_in
        else ""
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        f'<header><h1><a href="/">My phone account</a></h1>{who}</header>'
        f"<main>{body}</main></body></html>"
    )


def sign_in_page(csrf_token: str, note: str = "", oidc_name: str | None = None) -> str:
    """The address form; with `oidc_name`, a link to sign in through that organisation's
    identity provider beside it."""
    minutes = int(LINK_LIFETIME.total_seconds() // 60)
    provider = (
        '<section class="oidc"><h2>Or sign in with your organisation</h2>'
        f'<p><a class="button" href="{START_PATH}">Sign in with {escape(oidc_name)}</a></p>'
        "</section>"
        if oidc_name
        else ""
    )
    return page(
        "Sign in",
        "<section><h2>Sign in</h2>"
        f"{f'<p class=bad>{escape(note)}</p>' if note else ''}"
        "<p>Type the email address your organisation has for you. We mail you a link that "
        f"signs you in; it works once, for {minutes} minutes.</p>"
        '<form method="post" action="/sign-in">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf_token)}">'
        '<input type="email" name="address" required autocomplete="email" '
        'placeholder="you@example.org" aria-label="Email address"> '
        '<button type="submit">Mail me a link</button></form></section>' + provider,
    )


def link_sent_page() -> str:
    return page(
        "Check your mail",
        "<section><h2>Check your mail</h2><p>If the address is one we know, a sign-in link is on "
        "its way to it. Open the link on this device; it works once, for 15 minutes.</p>"
        '<p><a href="/sign-in">Send another link</a></p></section>',
    )


def confirm_page(token: str, csrf_token: str) -> str:
    """What a link opens: a button that signs in (a GET signs in no one, since mail scanners
    open links too)."""
    return page(
        "Confirm sign-in",
        "<section><h2>Sign in</h2><p>Sign in to see your balance, calls and statements.</p>"
        '<form method="post" action="/sign-in/confirm">'
        f'<input type="hidden" name="token" value="{escape(token)}">'
        f'<input type="hidden" name="csrf_token" value="{escape(csrf_token)}">'
        '<button type="submit">Sign in</button></form></section>',
    )


def message_page(title: str, text: str, link: str = "/sign-in", link_text: str = "Sign in") -> str:
    return page(
        title,
        f"<section><h2>{escape(title)}</h2><p>{escape(text)}</p>"
        f'<p><a href="{escape(link)}">{escape(link_text)}</a></p></section>',
    )


def _line_card(line: Line, form: TopupForm | None, timezone: str) -> str:
    state = "locked" if line.locked else "unlocked"
    words = "Locked: calls are refused" if line.locked else "Open for calls"
    body = (
        f'<section class="line"><h2>Balance of line {escape(line.account_id)}</h2>'
        f'<p><span class="balance">{money(line.balance_minor, line.currency)}</span> '
        f'<span class="state {state}">{words}</span></p>'
        f'<p class="muted">as of {local_time(line.updated_at, timezone)}</p>'
    )
    if form is not None:
        choices = "".join(
            f'<label><input type="radio" name="amount" value="{amount}"'
            f"{' checked' if n == 0 else ''}> {money(amount, line.currency)}</label>"
            for n, amount in enumerate(form.choices)
        )
        body += (
            f'<form method="post" action="/accounts/{line.ref}/topup">'
            f'<input type="hidden" name="key" value="{escape(form.key)}">'
            f'<input type="hidden" name="csrf_token" value="{escape(form.csrf_token)}">'
            f'<p class="choices">Top up: {choices}</p>'
            '<button type="submit">Top up now</button> '
            '<span class="muted">charged to the payment method on file</span></form>'
        )
    elif not line.can_top_up:
        body += '<p class="muted">No payment method on file: ask your administrator.</p>'
    return body + "</section>"


def _calls_card(calls: MonthCalls, timezone: str) -> str:
    rows = "".join(
        f"<tr><td>{local_time(c['call_start'], timezone)}</td>"
        f"<td>{'call' if c['kind'] == 'debit' else 'correction'}</td>"
        f'<td class="n">{c["billed_seconds"] or 0}</td>'
        f'<td class="n">{money(-int(c["amount_minor"]), calls.currency)}</td></tr>'
        for c in calls.shown
    )
    table = (
        "<table><thead><tr><th>Started</th><th></th><th class=n>Billed seconds</th>"
        f"<th class=n>Cost</th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else "<p class=muted>No calls this month yet.</p>"
    )
    return (
        f'<section class="calls"><h2>Calls this month, line {escape(calls.account_id)}</h2>'
        f"<p>{calls.count} calls so far, {money(-calls.total_minor, calls.currency)}</p>"
        f"{table}</section>"
    )


def _statements_card(statements: tuple[dict, ...]) -> str:
    rows = "".join(
        f"<tr><td>{escape(s['billing_month'])}</td><td>{escape(s['user_id'])}</td>"
        f'<td class="n">{s["call_count"]}</td>'
        f'<td class="n">{money(s["total_minor"], s["currency"])}</td><td>'
        + (
            f'<a href="/statements/{escape(s["statement_id"])}">Read</a> · '
            f'<a href="/statements/{escape(s["statement_id"])}.pdf">PDF</a>'
            if s["html_path"]
            else '<span class="muted">being prepared</span>'
        )
        + "</td></tr>"
        for s in statements
    )
    table = (
        "<table><thead><tr><th>Month</th><th>Line</th><th class=n>Calls</th><th class=n>Total"
        f"</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else "<p class=muted>No statements yet.</p>"
    )
    return f'<section class="statements"><h2>Statements</h2>{table}</section>'


def _topups_card(topups: tuple[dict, ...], timezone: str) -> str:
    rows = "".join(
        f"<tr><td>{local_time(t['requested_at'], timezone)}</td>"
        f"<td>{escape(t['account_id'])}</td>"
        f'<td class="n">{money(t["amount_minor"], t["currency"])}</td>'
        f'<td class="{escape(t["status"])}">{escape(t["status"])}</td>'
        f'<td><a href="/topups/{t["request_id"]}">Details</a></td></tr>'
        for t in topups
    )
    table = (
        "<table><thead><tr><th>Asked</th><th>Line</th><th class=n>Amount</th><th>Status</th>"
        f"<th></th></tr></thead><tbody>{rows}</tbody></table>"
        if rows
        else "<p class=muted>No top-ups yet.</p>"
    )
    return f'<section class="topups"><h2>Top-ups</h2>{table}</section>'


def overview_page(
    view: Overview, forms: dict[str, TopupForm], timezone: str, sign_out_token: str
) -> str:
    if not view.accounts:
        body = (
            "<section><h2>No lines</h2><p>Your address has no phone lines in the latest "
            "list from your organisation.</p></section>"
        )
    else:
        body = "".join(_line_card(line, forms.get(line.ref), timezone) for line in view.lines)
        body += "".join(_calls_card(calls, timezone) for calls in view.calls)
        if view.postpaid:
            body += (
                '<section class="postpaid"><h2>Calls of line'
                f"{'s' if len(view.postpaid) > 1 else ''} {escape(', '.join(view.postpaid))}</h2>"
                "<p>Your calls of this month appear in your statement once the month is billed "
                "(early next month).</p></section>"
            )
        body += _statements_card(view.statements)
        body += _topups_card(view.topups, timezone)
    return page("My phone account", body, view.address, sign_out_token)


def topup_page(topup: dict, timezone: str, address: str, sign_out_token: str) -> str:
    status = topup["status"]
    said = {
        "approved": "Approved: the amount is on your balance.",
        "declined": f"Declined by the payment provider: {topup['detail'] or 'no reason given'}.",
        "pending": "Sent to the payment provider; its answer is not in yet.",
        "unknown": "The payment provider has not answered yet; it is asked again shortly.",
    }.get(status, status)
    body = (
        f'<section class="topup"><h2>Top-up of {money(topup["amount_minor"], topup["currency"])}'
        f"</h2><p class={escape(status)}><strong>{escape(said)}</strong></p>"
        f"<p class=muted>Line {escape(topup['account_id'])}, asked "
        f"{local_time(topup['requested_at'], timezone)}.</p>"
        '<p><a href="/">Back to my account</a></p></section>'
    )
    return page("Top-up", body, address, sign_out_token)
