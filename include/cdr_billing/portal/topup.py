"""A top-up a signed-in user starts: recorded, charged and settled exactly as the prepaid DAG's
(cdr_billing.prepaid.topups): the request is committed pending before it is sent, the gateway
is asked with the form's key (a form sent twice charges once), and its answer is applied under
the account's lock with the lock or unlock it causes (a decline keeps or sets the lock). An
answer that does not come (`unknown`) is left to the DAG, which sends the request again with
the same key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from cdr_billing.portal import audit, auth, limits
from cdr_billing.prepaid import topups
from cdr_billing.prepaid.gateway import GatewayConfigError, GatewaySettings, HttpsGateway

KEY_PREFIX = "portal-"
KEY_CHARS = 32  # the form's key: uuid4().hex


class TopupRefused(Exception):
    """The top-up was not sent; the message says why, for the user."""


def requested_by(address: str) -> str:
    """Who a portal top-up is by, in the ledger: the portal and the user's address hash."""
    return f"portal:{auth.address_hash(address)[:32]}"


def _open(
    engine: Engine, account_id: str, amount_minor: int, key: str, address: str, client: str
) -> dict:
    now = datetime.now(UTC)
    with engine.begin() as conn:
        if not limits.allow(conn, limits.TOPUPS_PER_ACCOUNT, account_id, now):
            raise TopupRefused("Too many top-ups of this line within an hour: try again later.")
    opened = topups.open_user_request(
        engine, account_id, amount_minor, KEY_PREFIX + key, requested_by(address), now
    )
    with engine.begin() as conn:
        audit.record(
            conn,
            "topup_requested",
            now,
            address_hash=auth.address_hash(address),
            client_hash=client,
            account_id=account_id,
            detail=(
                f"refused: {opened.reason}"
                if isinstance(opened, topups.Skipped)
                else f"request {opened['request_id']} of {amount_minor} {opened['currency']}"
            ),
        )
    if isinstance(opened, topups.Skipped):
        raise TopupRefused(f"No top-up was started: {opened.reason}.")
    return opened


def start_topup(
    engine: Engine,
    gateway_settings: GatewaySettings,
    account_id: str,
    amount_minor: int,
    key: str,
    address: str,
    client: str,
) -> int:
    """Record, send and settle a user's top-up; return its request id."""
    if len(key) != KEY_CHARS or not all(c in "0123456789abcdef" for c in key):
        raise TopupRefused("The form was not sent as the page made it.")
    try:
        gateway = HttpsGateway.from_connection(gateway_settings)
    except (GatewayConfigError, LookupError, ValueError) as exc:
        raise TopupRefused("Top-ups are not available right now.") from exc
    request = _open(engine, account_id, amount_minor, key, address, client)
    if request["status"] not in topups.IN_FLIGHT:
        return int(request["request_id"])  # the same form again: its answer is known
    settings = topups.TopupSettings(
        requested_by=requested_by(address), entry_reason="top-up by the user in the portal"
    )
    result = gateway.charge(topups.charge_request(request))
    now = datetime.now(UTC)
    settled = topups.settle(engine, request, result, settings, now, resent=False)
    with engine.begin() as conn:
        audit.record(
            conn,
            "topup_settled",
            now,
            address_hash=auth.address_hash(address),
            client_hash=client,
            account_id=account_id,
            detail=f"request {request['request_id']}: {result.status}"
            + (f" ({result.detail})" if result.detail else "")
            + "".join(f"; line {c.action}" for c in settled.lock_changes),
        )
    return int(request["request_id"])
