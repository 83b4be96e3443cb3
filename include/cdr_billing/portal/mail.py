"""The sign-in mail: the link and how long it works, through the pipeline's SMTP connection.
The link is a secret: it goes into the mail only, never into a log line."""

from __future__ import annotations

import logging
from html import escape

from cdr_billing.portal.auth import LINK_LIFETIME, address_hash

log = logging.getLogger(__name__)
SUBJECT = "Your sign-in link"


def sign_in_mail(link: str) -> str:
    minutes = int(LINK_LIFETIME.total_seconds() // 60)
    return (
        "<p>Someone (we hope you) asked to sign in to your phone account.</p>"
        f'<p><a href="{escape(link)}">Sign in</a></p>'
        f"<p>Or open this address: {escape(link)}</p>"
        f"<p>The link works once, for {minutes} minutes. If you did not ask for it, ignore "
        "this mail: nobody can sign in without the link.</p>"
    )


def send_sign_in_link(smtp_connection: str, address: str, link: str) -> bool:
    """Mail the link; log (without link nor address) and return False when it cannot be sent."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    try:
        with SmtpHook(smtp_conn_id=smtp_connection) as hook:
            hook.send_email_smtp(to=[address], subject=SUBJECT, html_content=sign_in_mail(link))
    except Exception as exc:  # noqa: BLE001 (any failure: the user asks again)
        log.warning(
            "sign-in mail to address %s not sent: %s",
            address_hash(address)[:12],
            type(exc).__name__,
        )
        return False
    log.info("sign-in mail sent to address %s", address_hash(address)[:12])
    return True
