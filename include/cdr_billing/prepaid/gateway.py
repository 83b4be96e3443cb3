"""The payment gateway that charges an account's payment method for a top-up.

A small interface: one charge request carries an idempotency key, so the gateway charges once
however often the request is sent; an answer that does not say approved or declined (a
timeout, a dropped connection, a server error) is `unknown`: the charge may have happened, and
the same request is sent again with the same key until the gateway says which.

The HTTPS interface `HttpsGateway` speaks (the development kit's local gateway serves it for
the tests and the demo; docs/prepaid.md):

    POST /v1/charges
    Authorization: Bearer <API token>
    Idempotency-Key: <the request's key>
    Content-Type: application/json
    {"account_id": str, "payment_method": str, "amount_minor": int, "currency": str}

    201 (first answer) or 200 (the same key again: the first answer replayed, no new charge)
    {"id": str, "status": "approved" | "declined", "reason": str | null}
    409: the key was sent before with another body (nothing charged)
    401: the token is wrong;  5xx: the gateway failed

Its Airflow connection (default id `payment_gateway`): conn_type `https`, host, port, password
= the API token, extra `{"ca_cert": "<PEM>"}` the only certificate trusted for the gateway (its
authority or its own certificate; without it, the system's authorities). The token goes in one
header, never in a log line, an exception or a result's detail.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Protocol

from cdr_billing.privacy import mask_number

ChargeStatus = Literal["approved", "declined", "unknown"]

DEFAULT_CONNECTION = "payment_gateway"
CHARGES_PATH = "/v1/charges"
MAX_ANSWER_BYTES = 64 * 1024  # an answer is a few fields; more is not an answer
DETAIL_SNIPPET = 200  # characters of an unexpected answer kept in the detail

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChargeRequest:
    idempotency_key: str
    account_id: str
    payment_method_ref: str
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class ChargeResult:
    status: ChargeStatus
    reference: str | None  # the gateway's id of the charge, when it answered
    detail: str  # the decline reason or the error, for the operator


class PaymentGateway(Protocol):
    def charge(self, request: ChargeRequest) -> ChargeResult: ...


class GatewayConfigError(ValueError):
    """The gateway's Airflow connection is unusable (not https, no host or token, bad PEM)."""


@dataclass(frozen=True)
class GatewaySettings:
    """Which connection reaches the gateway and how long to wait for it: past the read timeout
    a charge is `unknown` and is sent again (same key) by the next run."""

    connection_id: str = DEFAULT_CONNECTION
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 20.0


@dataclass(frozen=True)
class GatewayEndpoint:
    """Where the gateway listens, its token and the CA it must prove itself with."""

    host: str
    port: int
    token: str = field(repr=False)
    ca_cert: str | None = field(default=None, repr=False)


class Answer(NamedTuple):
    """An HTTP answer: status code and (bounded) body."""

    status: int
    body: bytes


def endpoint_from_connection(conn_id: str = DEFAULT_CONNECTION) -> GatewayEndpoint:
    """The gateway's endpoint from its Airflow connection; refuses anything but https with a
    token (a charge must never travel in clear nor unauthenticated)."""
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(conn_id)
    if conn.conn_type != "https":
        raise GatewayConfigError(
            f"connection {conn_id}: conn_type must be https, not {conn.conn_type!r}"
        )
    if not conn.host:
        raise GatewayConfigError(f"connection {conn_id} has no host")
    if not conn.password:
        raise GatewayConfigError(f"connection {conn_id} has no API token (its password)")
    ca_cert = conn.extra_dejson.get("ca_cert")
    return GatewayEndpoint(conn.host, int(conn.port or 443), conn.password, ca_cert or None)


def tls_context(ca_cert: str | None) -> ssl.SSLContext:
    """A client TLS context that checks the gateway's certificate and host name. A pinned PEM
    is the only trust: its certificates are anchors themselves (partial chain), so it may be
    the gateway's authority or the gateway's own certificate."""
    if not ca_cert:
        context = ssl.create_default_context()
    else:
        try:
            context = ssl.create_default_context(cadata=ca_cert)
        except (ssl.SSLError, ValueError) as exc:
            raise GatewayConfigError(f"the gateway's ca_cert is not a usable PEM: {exc}") from None
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def charge_body(request: ChargeRequest) -> bytes:
    """The JSON body of a charge: the same request always gives the same bytes."""
    return json.dumps(
        {
            "account_id": request.account_id,
            "payment_method": request.payment_method_ref,
            "amount_minor": int(request.amount_minor),
            "currency": request.currency,
        },
        separators=(",", ":"),
    ).encode()


def _snippet(body: bytes) -> str:
    """The start of an answer on one line, for the operator's detail."""
    return " ".join(body[:DETAIL_SNIPPET].decode("utf-8", errors="replace").split())


def _unknown(detail: str) -> ChargeResult:
    return ChargeResult("unknown", None, detail)


def _decided(answer: Answer) -> ChargeResult:
    """A 200/201 answer: approved or declined, or `unknown` when it says neither clearly."""
    try:
        parsed = json.loads(answer.body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        return _unknown(f"malformed answer (HTTP {answer.status}): {_snippet(answer.body)}")
    status, reference, reason = parsed.get("status"), parsed.get("id"), parsed.get("reason")
    if status not in ("approved", "declined") or not isinstance(reference, str) or not reference:
        return _unknown(f"malformed answer (HTTP {answer.status}): {_snippet(answer.body)}")
    if status == "approved":
        return ChargeResult("approved", reference, "")
    return ChargeResult("declined", reference, str(reason) if reason else "declined, no reason")


def read_answer(answer: Answer) -> ChargeResult:
    """What an HTTP answer says about the charge. Only a well-formed 200/201 decides it; a
    refusal of the token, a reused key or a server error leave it `unknown`."""
    if answer.status in (200, 201):
        return _decided(answer)
    if answer.status in (401, 403):
        return _unknown(f"the gateway refused the API token (HTTP {answer.status})")
    if answer.status == 409:
        return _unknown(
            "the gateway refused the idempotency key: sent before with another body (HTTP 409)"
        )
    return _unknown(f"HTTP {answer.status} from the gateway: {_snippet(answer.body)}")


class HttpsGateway:
    """The payment gateway over HTTPS (the interface in this module's docstring)."""

    def __init__(self, endpoint: GatewayEndpoint, settings: GatewaySettings) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._context = tls_context(endpoint.ca_cert)

    @classmethod
    def from_connection(cls, settings: GatewaySettings | None = None) -> HttpsGateway:
        """The gateway of the settings' Airflow connection."""
        settings = settings or GatewaySettings()
        return cls(endpoint_from_connection(settings.connection_id), settings)

    def _post(self, key: str, body: bytes) -> Answer:
        connection = http.client.HTTPSConnection(
            self.endpoint.host,
            self.endpoint.port,
            timeout=self.settings.connect_timeout_seconds,
            context=self._context,
        )
        try:
            connection.connect()
            connection.sock.settimeout(self.settings.read_timeout_seconds)
            connection.request(
                "POST",
                CHARGES_PATH,
                body=body,
                headers={
                    "Authorization": f"Bearer {self.endpoint.token}",
                    "Idempotency-Key": key,
                    "Content-Type": "application/json",
                },
            )
            response = connection.getresponse()
            return Answer(response.status, response.read(MAX_ANSWER_BYTES))
        finally:
            connection.close()

    def _send(self, request: ChargeRequest) -> ChargeResult:
        try:
            answer = self._post(request.idempotency_key, charge_body(request))
        except ssl.SSLCertVerificationError as exc:
            return _unknown(f"TLS: the gateway's certificate is not trusted ({exc.verify_message})")
        except TimeoutError:
            return _unknown(
                "no answer from the gateway within "
                f"{self.settings.connect_timeout_seconds:g} s (connect) / "
                f"{self.settings.read_timeout_seconds:g} s (read): the charge may have happened"
            )
        except (OSError, http.client.HTTPException) as exc:
            return _unknown(f"connection to the gateway failed: {type(exc).__name__}: {exc}")
        return read_answer(answer)

    def charge(self, request: ChargeRequest) -> ChargeResult:
        """Send the charge once; any failure is an `unknown` result, never an exception."""
        result = self._send(request)
        log.info(
            "top-up %s of %s %s for account %s: %s%s",
            request.idempotency_key,
            request.amount_minor,
            request.currency,
            mask_number(request.account_id),
            result.status,
            f" ({result.detail})" if result.detail else "",
        )
        return result
