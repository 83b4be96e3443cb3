"""The payment gateway that charges an account's payment method for a top-up.

A small interface: one charge request carries an idempotency key, so the gateway charges once
however often the request is sent; an answer that does not say approved or declined (a
timeout, a dropped connection, a server error) is `unknown`: the charge may have happened, and
the same request is sent again with the same key until the gateway says which.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

ChargeStatus = Literal["approved", "declined", "unknown"]


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
