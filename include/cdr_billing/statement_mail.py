"""Statement mails: each user of a customer that delivers gets their statement once per batch,
as a PDF attachment or a link to the self-service portal.

Nothing is sent twice: a mail's row is claimed (pending|deferred -> sending, committed) before
the SMTP conversation, and its outcome recorded after it. The conversation is driven step by
step (MAIL, RCPT, DATA), so the outcome is known for what happened before DATA: a refusal
(5xx) is `bounced`, a temporary refusal (4xx) or a lost connection `deferred` (tried again
after retry_minutes, doubled each time, up to max_attempts). A connection lost during DATA
may have delivered the mail: `unknown`, like a row a crash left in `sending` (once older than
sending_stale_minutes). Unknown rows are never resent automatically (the Billing page lists
them; an operator checks the mail server's log). Bounces are the SMTP-time refusals only:
delivery status notifications that arrive later are not read (docs/statements.md).
A superseded batch's unsent mails are cancelled (by the load that supersedes it, and here).
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate
from pathlib import Path
from typing import NamedTuple

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.engine import Engine

from cdr_billing.config import StatementSettings
from cdr_billing.load import cancel_unsent_mails
from cdr_billing.money import from_minor_units
from cdr_billing.privacy import mask_phone_numbers
from cdr_billing.schema import (
    CURRENT,
    billing_batch,
    statement,
    statement_delivery,
    statement_document,
)

log = logging.getLogger(__name__)

PENDING, SENDING, SENT = "pending", "sending", "sent"
DEFERRED, BOUNCED, UNKNOWN = "deferred", "bounced", "unknown"
DUE = (PENDING, DEFERRED)
SMTP_TIMEOUT_SECONDS = 30


class Outcome(NamedTuple):
    """How one mail went: its new status, the server's reply, and whether the connection is
    gone (the next mail opens a new one)."""

    status: str
    reply: str
    connection_lost: bool = False


def _lost(status: str, what: str, error: BaseException) -> Outcome:
    return Outcome(status, mask_phone_numbers(f"{what}: {error}")[:500], connection_lost=True)


@dataclass(frozen=True)
class DeliveryPass:
    """What one delivery pass did, and how many mails still wait for a later pass."""

    sent: int = 0
    bounced: int = 0
    deferred: int = 0
    unknown: int = 0
    waiting: int = 0  # pending or deferred after the pass


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
    return mask_phone_numbers(f"{code} {text}")[:500]


def _refused(code: int, message: bytes | str) -> Outcome:
    """A refusal: 5xx permanent (bounced), else temporary (deferred)."""
    return Outcome(BOUNCED if 500 <= code < 600 else DEFERRED, _reply(code, message))


def send_once(client: smtplib.SMTP, sender: str, recipient: str, message: bytes) -> Outcome:
    """One mail over an open SMTP connection, step by step, so that a failure before DATA is
    known not to have delivered it (deferred) and one during DATA may have (unknown)."""
    try:
        client.ehlo_or_helo_if_needed()
        code, text = client.mail(sender)
        if code != 250:
            client.rset()
            return _refused(code, text)
        code, text = client.rcpt(recipient)
        if code not in (250, 251):
            client.rset()
            return _refused(code, text)
    except (smtplib.SMTPException, OSError) as error:
        return _lost(DEFERRED, "connection", error)
    try:
        code, text = client.data(message)
    except smtplib.SMTPDataError as error:
        return _refused(error.smtp_code, error.smtp_error)
    except (smtplib.SMTPException, OSError) as error:
        return _lost(UNKNOWN, "connection lost during DATA", error)
    return Outcome(SENT, _reply(code, text)) if code == 250 else _refused(code, text)


@dataclass(frozen=True)
class Claimed:
    """A mail claimed for sending, with what its message says."""

    statement_id: str
    address: str
    method: str
    attempts: int
    billing_month: str
    currency: str
    total_minor: int
    call_count: int
    pdf_path: str | None


def _claim_next(engine: Engine, batch_id: int, now: datetime) -> Claimed | None:
    """Claim the batch's next due mail (pending, or deferred and due) whose PDF is rendered:
    sending, committed before anything is sent. None: nothing due."""
    due = and_(
        statement_delivery.c.status.in_(DUE),
        or_(
            statement_delivery.c.next_attempt_at.is_(None),
            statement_delivery.c.next_attempt_at <= now,
        ),
    )
    query = (
        select(
            statement_delivery.c.statement_id,
            statement_delivery.c.address,
            statement_delivery.c.method,
            statement_delivery.c.attempts,
            statement_delivery.c.status,
            billing_batch.c.billing_month,
            statement.c.currency,
            statement.c.total_minor,
            statement.c.call_count,
            statement_document.c.pdf_path,
        )
        .join(statement, statement.c.statement_id == statement_delivery.c.statement_id)
        .join(billing_batch, billing_batch.c.batch_id == statement.c.batch_id)
        .join(
            statement_document,
            statement_document.c.statement_id == statement_delivery.c.statement_id,
        )
        .where(statement.c.batch_id == batch_id, due)
        .order_by(statement_delivery.c.statement_id)
        .limit(1)
    )
    while True:
        with engine.begin() as conn:
            row = conn.execute(query).mappings().first()
            if row is None:
                return None
            claimed = conn.execute(
                update(statement_delivery)
                .where(
                    statement_delivery.c.statement_id == row["statement_id"],
                    statement_delivery.c.status == row["status"],
                )
                .values(
                    status=SENDING,
                    claimed_at=now,
                    attempts=statement_delivery.c.attempts + 1,
                    updated_at=now,
                )
            ).rowcount
        if claimed == 1:  # else another pass took it first: look again
            fields = {k: row[k] for k in Claimed.__dataclass_fields__ if k != "attempts"}
            return Claimed(attempts=row["attempts"] + 1, **fields)


def build_message(
    claimed: Claimed, sender: str, settings: StatementSettings, message_domain: str
) -> EmailMessage:
    """The statement's mail: its total and either the PDF attached or the portal's link; the
    Message-ID is the statement's, so a receiver can tell a copy."""
    amount = f"{from_minor_units(claimed.total_minor, claimed.currency)} {claimed.currency}"
    message = EmailMessage()
    message["From"] = sender
    message["To"] = claimed.address
    message["Subject"] = f"Your itemised statement for {claimed.billing_month}"
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = f"<statement-{claimed.statement_id}@{message_domain}>"
    lines = [
        f"Your itemised statement for {claimed.billing_month}: {claimed.call_count} calls, "
        f"{amount}.",
        "",
    ]
    if claimed.method == "link":
        url = f"{settings.portal_url.rstrip('/')}/statements/{claimed.statement_id}"
        lines += ["Read it in the self-service portal (sign in with this address):", url]
        message.set_content("\n".join(lines))
    else:
        lines.append("The statement is attached as a PDF.")
        message.set_content("\n".join(lines))
        message.add_attachment(
            Path(claimed.pdf_path).read_bytes(),
            maintype="application",
            subtype="pdf",
            filename=f"statement-{claimed.billing_month}.pdf",
        )
    return message


def _record(
    engine: Engine, claimed: Claimed, outcome: Outcome, settings: StatementSettings, now: datetime
) -> str:
    """Write a claimed mail's outcome; a deferral past max_attempts is given up (bounced)."""
    status, reply, retry_at = outcome.status, outcome.reply, None
    if status == DEFERRED:
        if claimed.attempts >= settings.max_attempts:
            status, reply = BOUNCED, f"gave up after {claimed.attempts} attempts: {reply}"
        else:
            delay = settings.retry_minutes * 2 ** (claimed.attempts - 1)
            retry_at = now + timedelta(minutes=delay)
    values = {"status": status, "smtp_reply": reply, "next_attempt_at": retry_at}
    if status == SENT:
        values["sent_at"] = now
    with engine.begin() as conn:
        conn.execute(
            update(statement_delivery)
            .where(
                statement_delivery.c.statement_id == claimed.statement_id,
                statement_delivery.c.status == SENDING,
            )
            .values(**values, updated_at=datetime.now(UTC))
        )
    return status


def mark_stale_claims(engine: Engine, batch_id: int, cutoff: datetime) -> int:
    """Rows left in `sending` since before the cutoff (a crash mid-mail) become `unknown`:
    the mail may have gone; it is never resent automatically."""
    of_batch = select(statement.c.statement_id).where(statement.c.batch_id == batch_id)
    with engine.begin() as conn:
        return conn.execute(
            update(statement_delivery)
            .where(
                statement_delivery.c.statement_id.in_(of_batch),
                statement_delivery.c.status == SENDING,
                statement_delivery.c.claimed_at < cutoff,
            )
            .values(
                status=UNKNOWN,
                smtp_reply="the sender stopped during the mail: it may have been delivered",
                updated_at=datetime.now(UTC),
            )
        ).rowcount


def _waiting(engine: Engine, batch_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count())
            .select_from(statement_delivery)
            .join(statement, statement.c.statement_id == statement_delivery.c.statement_id)
            .where(statement.c.batch_id == batch_id, statement_delivery.c.status.in_(DUE))
        ).scalar_one()


def _is_current(engine: Engine, batch_id: int) -> bool:
    with engine.connect() as conn:
        status = conn.execute(
            select(billing_batch.c.status).where(billing_batch.c.batch_id == batch_id)
        ).scalar()
    return status == CURRENT


class SmtpSession:
    """One SMTP connection for a pass, from the Airflow connection, opened on first use and
    again after a connection error."""

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self.hook: object | None = None
        self.client: smtplib.SMTP | None = None

    def sender(self, configured: str | None) -> str:
        from airflow.sdk import BaseHook

        if configured:
            return configured
        address = BaseHook.get_connection(self.conn_id).extra_dejson.get("from_email")
        if not address:
            raise ValueError(
                f"statements.from_address is not set and connection {self.conn_id} has no "
                "from_email"
            )
        return address

    def open(self) -> smtplib.SMTP:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        if self.client is None:
            self.hook = SmtpHook(smtp_conn_id=self.conn_id)
            # the hook logs in and starts TLS as the connection says; its client is sent
            # through step by step here (the hook's own send retries could send a mail twice)
            try:
                self.client = self.hook.get_conn()._smtp_client
            except (smtplib.SMTPException, OSError):
                raise
            except Exception as error:  # the hook's AirflowException: could not connect
                raise OSError(str(error)) from error
        return self.client

    def drop(self) -> None:
        if self.client is not None:
            try:
                self.client.quit()
            except (smtplib.SMTPException, OSError):
                self.client.close()
        self.client = None


def deliver(
    engine: Engine,
    batch_id: int,
    settings: StatementSettings,
    smtp_conn_id: str,
    now: datetime | None = None,
) -> DeliveryPass:
    """One pass over a batch's due mails: each claimed, sent once and its outcome recorded.
    A superseded batch's unsent mails are cancelled instead."""
    now = now or datetime.now(UTC)
    if not _is_current(engine, batch_id):
        with engine.begin() as conn:
            cancel_unsent_mails(conn, batch_id)
        return DeliveryPass()
    mark_stale_claims(engine, batch_id, now - timedelta(minutes=settings.sending_stale_minutes))
    session = SmtpSession(smtp_conn_id)
    counts = {SENT: 0, BOUNCED: 0, DEFERRED: 0, UNKNOWN: 0}
    try:
        sender = session.sender(settings.from_address)
        domain = sender.rpartition("@")[2] or "localhost"
        while (claimed := _claim_next(engine, batch_id, now)) is not None:
            message = build_message(claimed, sender, settings, domain).as_bytes(policy=SMTP)
            try:
                outcome = send_once(session.open(), sender, claimed.address, message)
            except (smtplib.SMTPException, OSError) as error:  # could not connect: not sent
                outcome = _lost(DEFERRED, "connection", error)
            if outcome.connection_lost:
                session.drop()
            counts[_record(engine, claimed, outcome, settings, now)] += 1
    finally:
        session.drop()
    result = DeliveryPass(**counts, waiting=_waiting(engine, batch_id))
    log.info("statement mails of batch %d: %s", batch_id, result)
    return result
