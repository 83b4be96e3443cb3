"""Which rated calls are prepaid, in the shape the balance ledger debits.

Both DAGs rate calls with the same functions; a call whose account (the CDR's user_id) is an
active prepaid account is debited to its balance instead of billed on a post-paid line. A call
is known to the ledger by its source and transaction id, the key the month's duplicates are
found by, so the same call read again (a re-delivery, the monthly run, a re-run) is the same
call.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Connection

from cdr_billing.frames import rows_where
from cdr_billing.prepaid.balances import CALL_COLUMNS
from cdr_billing.schema import prepaid_account

# the part of each CDR file of a run that holds its prepaid calls, in the ledger's shape
PREPAID_PART = "prepaid"


def active_accounts(conn: Connection) -> frozenset[str]:
    """The ids of the active prepaid accounts."""
    query = select(prepaid_account.c.account_id).where(prepaid_account.c.active)
    return frozenset(conn.execute(query).scalars())


def prepaid_mask(priced: pd.DataFrame, accounts: frozenset[str]) -> np.ndarray:
    """Per priced call: whether its account is prepaid."""
    if not accounts:
        return np.zeros(len(priced), dtype=bool)
    return priced["user_id"].isin(accounts).to_numpy(bool)


def calls_to_debit(priced: pd.DataFrame) -> pd.DataFrame:
    """Priced calls (rate.rate_calls' columns) as the ledger debits them (CALL_COLUMNS)."""
    return pd.DataFrame(
        {
            "call_key": priced["source"].astype(str) + ":" + priced["transaction_id"].astype(str),
            "account_id": priced["user_id"].astype(str),
            "cost_minor": priced["cost_minor"].astype("int64"),
            "currency": priced["currency"].astype(str),
            "call_start": priced["start_utc"],
            "billed_seconds": priced["billed_seconds"].astype("int64"),
            "tariff_version": priced["tariff_version"].astype("Int64"),
            "source_file": priced["source_file"].astype(str),
            "source_row": priced["source_row"].astype("int64"),
        },
        columns=list(CALL_COLUMNS),
    )


class PrepaidSplit(NamedTuple):
    """A file's priced calls: the prepaid ones to debit, the others to bill."""

    prepaid: pd.DataFrame  # CALL_COLUMNS
    postpaid: pd.DataFrame  # the priced calls' columns


def split_prepaid(priced: pd.DataFrame, accounts: frozenset[str]) -> PrepaidSplit:
    """The prepaid calls as the ledger debits them, and the other priced calls."""
    prepaid = prepaid_mask(priced, accounts)
    if not prepaid.any():
        return PrepaidSplit(calls_to_debit(priced.iloc[:0]), priced)
    return PrepaidSplit(calls_to_debit(rows_where(priced, prepaid)), rows_where(priced, ~prepaid))
