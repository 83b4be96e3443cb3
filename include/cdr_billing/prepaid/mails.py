"""The prepaid runs' alert mails: declined top-ups, lines locked and unlocked, webhooks the
switch does not accept, and money at risk above the limit. Account ids that look like phone
numbers are masked, as in every log line and mail."""

from __future__ import annotations

from cdr_billing.alerts import Alert, listing_alert
from cdr_billing.prepaid.accounts import format_amount
from cdr_billing.prepaid.exposure import ExposureReport
from cdr_billing.prepaid.locks import LockChange
from cdr_billing.prepaid.switch import FailedDelivery
from cdr_billing.prepaid.topups import TopupResult
from cdr_billing.privacy import shown_id


def topup_problems_alert(
    declined: tuple[TopupResult, ...], unanswered: tuple[TopupResult, ...]
) -> Alert:
    """Top-ups the gateway declined (the accounts stay low, and lock at their lock level) or
    left unanswered (sent again with the same key by the next run; nothing is charged twice)."""
    return listing_alert(
        "topup_declined",
        f"[CDR billing] {len(declined)} prepaid top-ups declined, {len(unanswered)} unanswered",
        "The payment gateway declined these top-ups, or gave no clear answer:",
        [
            f"{shown_id(r.account_id)}: {format_amount(r.amount_minor, r.currency)} "
            f"{r.status} ({r.detail or 'no reason given'})"
            for r in (*declined, *unanswered)
        ],
        "After a decline no other top-up is requested for the account during the hold-off "
        "(prepaid.topup_holdoff_minutes): ask the user to update the payment method, or record "
        "a manual top-up (python -m cdr_billing.prepaid.accounts credit ACCOUNT ...). An "
        "unanswered request is sent again with its key; check the gateway (connection "
        "payment_gateway) if it stays unanswered.",
    )


def lock_changes_alert(changes: tuple[LockChange, ...]) -> Alert:
    """Lines locked (no credit, no top-up) and unlocked (topped up)."""
    locked = sum(c.action == "LOCK" for c in changes)
    return listing_alert(
        "line_locked",
        f"[CDR billing] {locked} prepaid lines locked, {len(changes) - locked} unlocked",
        "The switch is told of each change (webhook and the prepaid_line_state view):",
        [
            f"{c.action} {shown_id(c.account_id)} at "
            f"{format_amount(c.balance_minor, c.currency)}: {c.reason}"
            for c in changes
        ],
        "A locked line makes no outgoing calls until a top-up brings its balance above the "
        "unlock level.",
    )


def webhook_failing_alert(failures: tuple[FailedDelivery, ...], waiting: int) -> Alert:
    """Lock and unlock events the switch did not accept: they are retried, in order."""
    return listing_alert(
        "webhook_failing",
        f"[CDR billing] The switch did not accept {len(failures)} lock/unlock events",
        f"These events are retried with backoff, in order per account ({waiting} waiting):",
        [f.alert_line() for f in failures],
        "Check that the switch's endpoint (connection prepaid_switch) is up and that its "
        "secret matches; until then the switch can read prepaid_line_state.",
    )


def exposure_alert(report: ExposureReport) -> Alert:
    """Accounts whose money at risk between two runs is above the configured limit."""
    return listing_alert(
        "exposure",
        f"[CDR billing] {len(report.above_limit)} prepaid accounts above the exposure limit",
        "Money at risk between two balance updates (2 x concurrent calls x longest call x "
        "average price per minute, plus calls not yet debited):",
        [
            f"{shown_id(a.account_id)}: {format_amount(a.at_risk_minor, a.currency)} "
            f"({a.max_concurrent_calls} calls at once, up to {a.max_call_seconds} s each)"
            for a in report.above_limit
        ],
        "Lower the account's max concurrent calls or the longest call the switch allows "
        "(prepaid.max_call_seconds, with the switch's own limit), or raise "
        "prepaid.exposure_limit if the risk is accepted (docs/prepaid.md).",
    )
