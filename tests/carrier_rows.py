"""Lines of a carrier CSV file for reader tests: the header, and a good row unless told
otherwise."""

from __future__ import annotations

from cdr_billing.canonical import CARRIER_FIELDS

HEADER = ",".join(CARRIER_FIELDS)


def row(transaction: str, **values: str) -> str:
    """A carrier CSV line, good unless `values` say otherwise."""
    cells = dict.fromkeys(CARRIER_FIELDS, "")
    cells.update(
        transaction_id=transaction,
        user_id="SUB-1",
        start_of_usage="2026-10-05T09:00:00Z",
        duration_of_usage="60",
        destination_party="+46701234567",
        completion_status="1",
    )
    cells.update(values)
    return ",".join(cells[name] for name in CARRIER_FIELDS)
