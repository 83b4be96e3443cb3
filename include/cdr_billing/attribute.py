"""Attribute priced calls to who pays: customer id and sequence number (cost center).

Each call is matched against the snapshot valid at its start: the latest one taken at or
before it; a call older than every snapshot uses the month's own snapshot (the one the month
is billed with, which a refresh replaces). A user without a cost center is
billed to the customer's default sequence number. Unknown or not-entitled accounts are never
billed to a guessed customer: their calls go to suspense.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

UNKNOWN_ACCOUNT, NOT_ENTITLED, NO_SEQUENCE_NUMBER = "UNKNOWN_ACCOUNT", "NOT_ENTITLED", "NO_SEQUENCE_NUMBER"
JOINED = ["customer_id", "sequence_number", "default_sequence_number", "entitled", "last_login"]


def snapshot_at(starts_utc: pd.Series, history: pd.DataFrame, month_snapshot: int) -> np.ndarray:
    """The snapshot id valid at each moment: the latest taken at or before it, else the month's."""
    snapshots = history[["snapshot_id", "taken_at"]].drop_duplicates().sort_values(["taken_at", "snapshot_id"])
    taken = snapshots["taken_at"].astype("int64").to_numpy()
    position = np.searchsorted(taken, starts_utc.astype("int64").to_numpy(), side="right") - 1
    return np.where(position >= 0, snapshots["snapshot_id"].to_numpy()[np.maximum(position, 0)], month_snapshot)


def attribute_calls(priced: pd.DataFrame, history: pd.DataFrame, month_snapshot: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (attributed calls with customer_id and sequence_number, suspense calls)."""
    keyed = priced.assign(entitlement_snapshot=snapshot_at(priced["start_utc"], history, month_snapshot))
    accounts = history.set_index(["snapshot_id", "account_id"])[JOINED]
    joined = keyed.join(accounts, on=["entitlement_snapshot", "user_id"])
    known = joined["customer_id"].notna()
    own = joined["sequence_number"].fillna("")
    sequence = own.where(own != "", joined["default_sequence_number"]).fillna("")
    joined = joined.assign(sequence_number=sequence, used_default_sequence=known & (own == ""))
    known, entitled = known.to_numpy(), joined["entitled"].fillna(False).to_numpy(bool)
    no_sequence = (sequence == "").to_numpy()
    held = ~known | ~entitled | no_sequence
    suspense = np.flatnonzero(held)
    reasons = np.select(  # the first that applies
        [~known[suspense], ~entitled[suspense]], [UNKNOWN_ACCOUNT, NOT_ENTITLED], NO_SEQUENCE_NUMBER
    )
    kept = joined.drop(columns=["default_sequence_number", "entitled"])
    in_suspense = kept.take(suspense).assign(reason_code=pd.Series(reasons, index=kept.index[suspense], dtype="str"))
    return kept.take(np.flatnonzero(~held)).reset_index(drop=True), in_suspense.reset_index(drop=True)


def stale_accounts(attributed: pd.DataFrame, cutoff: pd.Timestamp) -> list[dict]:
    """Billed accounts whose last login is before the cutoff: their cost center may be out of date."""
    last_login = pd.to_datetime(attributed["last_login"], errors="coerce")
    stale = attributed[last_login.isna() | (last_login < cutoff.tz_localize(None))]
    grouped = stale.groupby(["user_id", "customer_id", "last_login"]).size().rename("calls").reset_index()
    return [
        {"account_id": r.user_id, "customer_id": r.customer_id, "last_login": r.last_login or "never", "calls": int(r.calls)}
        for r in grouped.sort_values(["customer_id", "user_id"]).itertuples()
    ]


def merge_stale_accounts(stale: list[dict]) -> list[dict]:
    """Stale accounts found file by file, one entry per account with all its calls."""
    merged: dict[tuple, dict] = {}
    for entry in stale:
        key = (entry["account_id"], entry["customer_id"], entry["last_login"])
        merged[key] = {**entry, "calls": merged.get(key, {"calls": 0})["calls"] + entry["calls"]}
    return sorted(merged.values(), key=lambda e: (e["customer_id"], e["account_id"]))
