"""Operational alert mails sent from inside tasks (task failures use SmtpNotifier).

Alerts never carry secrets or full phone numbers; a mail that cannot be sent is logged as
an error and does not stop the billing run.
"""

from __future__ import annotations

import copy
import html
import logging
import socket
from dataclasses import dataclass

from airflow.providers.smtp.notifications.smtp import SmtpNotifier

log = logging.getLogger(__name__)


# replaced by the task's next step, or UNREACHABLE_STEP, when a mail is sent
NEXT_STEP = "<!--next step-->"
UNREACHABLE_STEP = (
    "A server or database did not answer (the error names it): the files and the data are not "
    "at fault. Check that it is up and reachable from the workers (connection, network, "
    "credentials)."
)
# Errors that mean a server or database could not be reached, by class name (so that no driver
# has to be imported here).
UNREACHABLE_ERRORS = frozenset(
    {
        "OperationalError",
        "InterfaceError",
        "NoValidConnectionsError",
        "SSHException",
        "SMTPConnectError",
        "SMTPServerDisconnected",
    }
)


def is_unreachable(error: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is a server or database that did not answer."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if (
            isinstance(error, ConnectionError | TimeoutError | socket.gaierror)
            or type(error).__name__ in UNREACHABLE_ERRORS
        ):
            return True
        error = error.__cause__ or error.__context__
    return False


class TaskFailureMail(SmtpNotifier):
    """SmtpNotifier that renders its templates afresh for every call, says what to do next for
    the error at hand, and stays silent for an error whose own alert was mailed already.

    The base class renders subject and body in place, so in a process that sees two
    failures (dag.test, a long-lived worker) the second mail would repeat the first.
    """

    def __init__(self, *, next_step: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.next_step = next_step

    def __call__(self, *args) -> None:
        error = args[0].get("exception") if len(args) == 1 else None
        if getattr(error, "alert_mailed", False):
            log.info("no failure mail: the %s alert said it", type(error).__name__)
            return
        mail = copy.copy(self)
        step = UNREACHABLE_STEP if is_unreachable(error) else self.next_step
        mail.html_content = self.html_content.replace(NEXT_STEP, html.escape(step))
        SmtpNotifier.__call__(mail, *args)


def task_failure_mail(
    recipients: list[str], timezone: str, next_step: str, smtp_conn_id: str
) -> TaskFailureMail:
    """The mail a failed task sends: which month, which task, what went wrong in one sentence,
    the log link and what to do next."""
    month = (
        "{{ params.get('billing_month') or (data_interval_start and "
        f"data_interval_start.in_timezone('{timezone}').strftime('%Y-%m')) or 'unknown' }}}}"
    )
    sentence = (
        "{{ ((exception ~ '').strip().split('\n') | first | default('no error message'))"
        " | truncate(300) }}"
    )
    return TaskFailureMail(
        next_step=next_step,
        smtp_conn_id=smtp_conn_id,
        to=recipients,
        subject=f"[CDR billing] {month}: {{{{ ti.task_id }}}} failed - {sentence}",
        html_content=(
            f"<p>Billing month <b>{month}</b>: task <b>{{{{ ti.task_id }}}}</b> failed "
            "(try {{ ti.try_number }}, run {{ run_id }}).</p>"
            f"<p>What went wrong: {sentence}</p>"
            '<p><a href="{{ ti.log_url }}">Task log</a></p>'
            f"<p>What to do next: {NEXT_STEP} Then clear the task in the Airflow UI to re-run it; "
            "re-running a month never bills it twice.</p>"
        ),
    )


@dataclass(frozen=True)
class Alert:
    """One mail: a kind (routes it to its recipients), a subject line and a few plain sentences."""

    kind: str
    subject: str
    lines: tuple[str, ...] = ()
    html_body: str = ""  # a ready HTML body instead of lines (the month report)

    def html(self) -> str:
        return self.html_body or "".join(f"<p>{html.escape(line)}</p>" for line in self.lines)


def files_not_arrived_alert(month: str, missing: list[str], deadline: str) -> Alert:
    """The deadline passed and sources have still delivered nothing for the month."""
    return Alert(
        "files_not_arrived",
        f"[CDR billing] Files for {month} have not arrived from {', '.join(missing)}",
        (
            f"No CDR file for {month} from {', '.join(missing)} on any SFTP server, "
            f"and the deadline ({deadline}) has passed.",
            "The month is not billed. Ask the provider to deliver, then clear wait_for_cdr_files "
            "in the Airflow UI (or trigger the DAG with billing_month) to bill it.",
        ),
    )


def validation_alert(
    month: str,
    file_name: str,
    problem: str,
    expectations: tuple[str, ...],
    samples: tuple[str, ...],
) -> Alert:
    """A file failed validation: the month is not billed until it is fixed or redelivered."""
    return Alert(
        "validation",
        f"[CDR billing] {file_name} failed validation ({month})",
        (
            f"{file_name}: {problem}",
            *([f"Failed expectations: {', '.join(expectations)}."] if expectations else []),
            *[f"Sample: {sample}" for sample in samples],
            "The month is not billed. The rejected rows are in quarantined_row with their reasons; "
            "ask the provider to redeliver the file (or fix the source profile if the format "
            "changed), then clear the file's validate_cdr_file task.",
        ),
    )


def failover_alert(month: str, failed: dict[str, str], took_over: str) -> Alert:
    """One server failed and the next one delivered."""
    return Alert(
        "failover",
        f"[CDR billing] SFTP failover for {month}: "
        f"{failed['server']} failed, {took_over} took over",
        (
            f"Fetching the CDR files of {month} from {failed['server']} failed: {failed['error']}.",
            f"{took_over} took over and delivered the files; billing goes on.",
            "Check the failed server. A host key error may mean an attack: do not re-pin the key "
            "before its fingerprint is confirmed with the provider.",
        ),
    )


def held_file_alert(month: str, source: str, name: str, reason: str) -> Alert:
    """A file arrived again under a known name with different content."""
    return Alert(
        "held_file",
        f"[CDR billing] {name} changed content: held, not billed ({month})",
        (
            f"The file {name} from source {source} was delivered again "
            f"with different content ({reason}).",
            "The new content is held: it is not billed and the billed content is not replaced.",
            "Ask the provider which version is right. To bill the new content: "
            f"python -m cdr_billing.ledger release {name} "
            f"(or trigger the month with release_held_files [{name}]), then re-run the month.",
        ),
    )


MAX_LISTED = 20


def listing_alert(kind: str, subject: str, intro: str, items: list[str], advice: str) -> Alert:
    """An alert that lists up to MAX_LISTED items between an introduction and the advice."""
    more = (
        [f"... and {len(items) - MAX_LISTED} more (see the month report)."]
        if len(items) > MAX_LISTED
        else []
    )
    return Alert(kind, subject, (intro, *items[:MAX_LISTED], *more, advice))


def unbillable_alert(month: str, ranges: list[dict]) -> Alert:
    """Calls the tariff cannot price yet, per number range."""
    return listing_alert(
        "unbillable",
        f"[CDR billing] {sum(r['calls'] for r in ranges)} unbillable calls "
        f"in {len(ranges)} number ranges ({month})",
        f"These calls of {month} match no tariff rate and are kept as unbillable, "
        "not billed at zero:",
        [
            f"{r['number_range']}: {r['calls']} calls, {r['minutes']} minutes ({r['reason_code']})"
            for r in ranges
        ],
        "Add the ranges to the tariff (python -m cdr_billing.tariff load FILE), "
        "then re-run the month: the calls will be billed "
        "and the new batch replaces the current one.",
    )


def suspense_alert(month: str, accounts: list[dict]) -> Alert:
    """Calls of accounts that are unknown or not entitled: not billed to anyone yet."""
    return listing_alert(
        "suspense",
        f"[CDR billing] {sum(a['calls'] for a in accounts)} calls "
        f"of {len(accounts)} accounts in suspense ({month})",
        f"These accounts' calls of {month} are not billed to a guessed customer; "
        "they wait in suspense:",
        [f"{a['account_id']}: {a['calls']} calls ({a['reason_code']})" for a in accounts],
        "Fix the accounts in the entitlement system, "
        "then re-run the month with refresh_entitlements on.",
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
