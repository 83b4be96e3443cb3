"""Operational alert mails sent from inside tasks (task failures use SmtpNotifier).

Alerts never carry secrets or full phone numbers; a mail that cannot be sent is logged as
an error and does not stop the billing run.
"""

from __future__ import annotations

import copy
import html
import logging
from dataclasses import dataclass

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

log = logging.getLogger(__name__)


class TaskFailureMail(SmtpNotifier):
    """SmtpNotifier that renders its templates afresh for every call.

    The base class renders subject and body in place, so in a process that sees two
    failures (dag.test, a long-lived worker) the second mail would repeat the first.
    """

    def __call__(self, *args) -> None:
        SmtpNotifier.__call__(copy.copy(self), *args)


@dataclass(frozen=True)
class Alert:
    """One mail: a subject line and a few plain sentences."""

    subject: str
    lines: tuple[str, ...] = ()
    html_body: str = ""  # a ready HTML body instead of lines (the month report)

    def html(self) -> str:
        return self.html_body or "".join(f"<p>{html.escape(line)}</p>" for line in self.lines)


def failover_alert(month: str, failed: dict[str, str], took_over: str) -> Alert:
    """One server failed and the next one delivered."""
    return Alert(
        f"[CDR billing] SFTP failover for {month}: {failed['server']} failed, {took_over} took over",
        (
            f"Fetching the CDR files of {month} from {failed['server']} failed: {failed['error']}.",
            f"{took_over} took over and delivered the files; billing goes on.",
            "Check the failed server. A host key error may mean an attack: do not re-pin the key before "
            "its fingerprint is confirmed with the provider.",
        ),
    )


def held_file_alert(month: str, source: str, name: str, reason: str) -> Alert:
    """A file arrived again under a known name with different content."""
    return Alert(
        f"[CDR billing] {name} changed content: held, not billed ({month})",
        (
            f"The file {name} from source {source} was delivered again with different content ({reason}).",
            "The new content is held: it is not billed and the billed content is not replaced.",
            "Ask the provider which version is right before anything is re-billed.",
        ),
    )


MAX_LISTED = 20


def _listing(subject: str, intro: str, items: list[str], advice: str) -> Alert:
    """An alert that lists up to MAX_LISTED items between an introduction and the advice."""
    more = [f"... and {len(items) - MAX_LISTED} more (see the month report)."] if len(items) > MAX_LISTED else []
    return Alert(subject, (intro, *items[:MAX_LISTED], *more, advice))


def unbillable_alert(month: str, ranges: list[dict]) -> Alert:
    """Calls the tariff cannot price yet, per number range."""
    return _listing(
        f"[CDR billing] {sum(r['calls'] for r in ranges)} unbillable calls in {len(ranges)} number ranges ({month})",
        f"These calls of {month} match no tariff rate and are kept as unbillable, not billed at zero:",
        [f"{r['number_range']}: {r['calls']} calls, {r['minutes']} minutes ({r['reason_code']})" for r in ranges],
        "Add the ranges to the tariff (python -m cdr_billing.tariff load FILE), then re-run the month: "
        "the calls will be billed and the new batch replaces the current one.",
    )


def suspense_alert(month: str, accounts: list[dict]) -> Alert:
    """Calls of accounts that are unknown or not entitled: not billed to anyone yet."""
    return _listing(
        f"[CDR billing] {sum(a['calls'] for a in accounts)} calls of {len(accounts)} accounts in suspense ({month})",
        f"These accounts' calls of {month} are not billed to a guessed customer; they wait in suspense:",
        [f"{a['account_id']}: {a['calls']} calls ({a['reason_code']})" for a in accounts],
        "Fix the accounts in the entitlement system, then re-run the month with refresh_entitlements on.",
    )


def send(alert: Alert, recipients: list[str], smtp_conn_id: str = "smtp_default") -> None:
    """Send an alert mail; log (not raise) when it cannot be sent."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    try:
        with SmtpHook(smtp_conn_id=smtp_conn_id) as hook:
            hook.send_email_smtp(to=recipients, subject=alert.subject, html_content=alert.html())
        log.info("alert sent: %s", alert.subject)
    except Exception:
        log.exception("could not send the alert %r", alert.subject)
