"""Attribute priced calls to who pays: customer id and sequence number (cost center).

Each call is matched against the snapshot valid at its start: the latest one taken at or
before it; a call older than every snapshot uses the month's own snapshot (the one the month
is billed with, which a refresh replaces). A user without a cost center is
billed to the customer's default sequence number. Unknown or not-entitled accounts are never
billed to a guessed customer: their calls go to suspense.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cdr_billing.frames import rows_where

UNKNOWN_ACCOUNT, NOT_ENTITLED, NO_SEQUENCE_NUMBER = "UNKNOWN_ACCOUNT", "NOT_ENTITLED", "NO_SEQUENCE_NUMBER"
HELD_REASONS = np.array(["", NOT_ENTITLED, NO_SEQUENCE_NUMBER, UNKNOWN_ACCOUNT])  # a reason's code is its position


def snapshot_at(starts_utc: pd.Series, history: pd.DataFrame, month_snapshot: int) -> np.ndarray:
    """The snapshot id valid at each moment: the latest taken at or before it, else the month's."""
    snapshots = history[["snapshot_id", "taken_at"]].drop_duplicates().sort_values(["taken_at", "snapshot_id"])
    taken = snapshots["taken_at"].astype("int64").to_numpy()
    position = np.searchsorted(taken, starts_utc.astype("int64").to_numpy(), side="right") - 1
    return np.where(position >= 0, snapshots["snapshot_id"].to_numpy()[np.maximum(position, 0)], month_snapshot)


def account_rows(user_ids: pd.Series, snapshots: np.ndarray, history: pd.DataFrame) -> np.ndarray:
    """Each call's row in `history`: its account in the snapshot that applies to it, or -1."""
    users, found = pa.array(user_ids, type=pa.large_string()), np.full(len(user_ids), -1, dtype=np.int64)
    snapshot_of_row = history["snapshot_id"].to_numpy()
    for snapshot_id in np.unique(snapshots):
        rows = np.flatnonzero(snapshot_of_row == snapshot_id)
        calls = snapshots == snapshot_id
        at = pc.index_in(users.filter(calls), value_set=pa.array(history["account_id"].iloc[rows], type=pa.large_string()))
        found[calls] = np.where(at.is_null(), -1, rows[pc.fill_null(at, 0).to_numpy(zero_copy_only=False)])
    return found


def _account_terms(history: pd.DataFrame) -> pd.DataFrame:
    """Per account of `history`: customer, last login, the sequence number billed (its own, else
    the customer's default), whether that is the default, why its calls are held (a
    HELD_REASONS code; 0: billed), and a number for its (customer, sequence number, account)."""
    own = history["sequence_number"].fillna("")
    sequence = own.where(own != "", history["default_sequence_number"]).fillna("")
    held = np.select([~history["entitled"].to_numpy(bool), (sequence == "").to_numpy()], [1, 2], 0)
    terms = history[["customer_id", "last_login", "account_id"]].assign(
        sequence_number=sequence, used_default_sequence=own == "", held=held
    )
    return terms.assign(
        user_code=terms.groupby(["customer_id", "sequence_number", "account_id"], sort=False, dropna=False).ngroup()
    )


def _with_terms(calls: pd.DataFrame, snapshots: np.ndarray, rows: np.ndarray, terms: pd.DataFrame) -> pd.DataFrame:
    """The calls with the snapshot that applied and their account's terms (empty for an unknown account)."""
    at = pa.array(rows, mask=rows < 0)

    def taken(name: str) -> pd.Series:
        return pd.Series(pa.array(terms[name], type=pa.large_string()).take(at), index=calls.index, dtype="str")

    return calls.assign(
        entitlement_snapshot=snapshots,
        customer_id=taken("customer_id"),
        sequence_number=taken("sequence_number").fillna(""),
        last_login=taken("last_login"),
        used_default_sequence=(rows >= 0) & terms["used_default_sequence"].to_numpy(bool)[np.maximum(rows, 0)],
    )


class Attribution(NamedTuple):
    """Calls attributed (with customer_id and sequence_number) and in suspense; and per
    attributed call a number for its (customer id, sequence number, user id), equal numbers
    for equal texts, which `aggregate.aggregate_users` sums the calls by."""

    attributed: pd.DataFrame
    suspense: pd.DataFrame
    user_codes: np.ndarray


def attribute_calls(priced: pd.DataFrame, history: pd.DataFrame, month_snapshot: int) -> Attribution:
    """Attribute each call to the account terms valid at its start, or set it aside in suspense."""
    snapshots = snapshot_at(priced["start_utc"], history, month_snapshot)
    rows, terms = account_rows(priced["user_id"], snapshots, history), _account_terms(history)
    reasons = np.where(rows >= 0, terms["held"].to_numpy()[np.maximum(rows, 0)], 3)
    billed, held = reasons == 0, reasons != 0
    attributed = _with_terms(rows_where(priced, billed), snapshots[billed], rows[billed], terms)
    suspense = _with_terms(rows_where(priced, held), snapshots[held], rows[held], terms)
    suspense = suspense.assign(reason_code=pd.Series(HELD_REASONS[reasons[held]], dtype="str"))
    return Attribution(attributed, suspense, terms["user_code"].to_numpy()[rows[billed]])


def stale_accounts(attributed: pd.DataFrame, cutoff: pd.Timestamp) -> list[dict]:
    """Billed accounts whose last login is before the cutoff: their cost center may be out of date."""
    accounts = attributed.groupby(["user_id", "customer_id", "last_login"], sort=False).size().rename("calls").reset_index()
    last_login = pd.to_datetime(accounts["last_login"], errors="coerce")  # once per account, not per call
    stale = accounts[last_login.isna() | (last_login < cutoff.tz_localize(None))]
    return [
        {"account_id": r.user_id, "customer_id": r.customer_id, "last_login": r.last_login or "never", "calls": int(r.calls)}
        for r in stale.sort_values(["customer_id", "user_id"]).itertuples()
    ]


def merge_stale_accounts(stale: list[dict]) -> list[dict]:
    """Stale accounts found file by file, one entry per account with all its calls."""
    merged: dict[tuple, dict] = {}
    for entry in stale:
        key = (entry["account_id"], entry["customer_id"], entry["last_login"])
        merged[key] = {**entry, "calls": merged.get(key, {"calls": 0})["calls"] + entry["calls"]}
    return sorted(merged.values(), key=lambda e: (e["customer_id"], e["account_id"]))
