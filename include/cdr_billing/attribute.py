"""Attribute priced calls to who pays: customer id and sequence number (cost center).

The entitlement snapshot maps provider account ids to customers. A user without a cost
center is billed to the customer's default sequence number. Unknown or not-entitled
accounts are never billed to a guessed customer: their calls go to suspense.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

ENTITLEMENT_COLUMNS = (
    "account_id",
    "user_principal_name",
    "customer_id",
    "sequence_number",
    "default_sequence_number",
    "entitled",
    "last_login",
)
TRUE_WORDS, FALSE_WORDS = {"true", "1", "yes", "y"}, {"false", "0", "no", "n"}
UNKNOWN_ACCOUNT, NOT_ENTITLED, NO_SEQUENCE_NUMBER = "UNKNOWN_ACCOUNT", "NOT_ENTITLED", "NO_SEQUENCE_NUMBER"


class EntitlementError(ValueError):
    """The entitlement snapshot is unusable; the message names the file and rows."""


def load_entitlements(path: Path) -> pd.DataFrame:
    """Read an entitlement snapshot CSV; reject missing columns, bad flags and duplicates."""
    snapshot = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ENTITLEMENT_COLUMNS if c not in snapshot.columns]
    if missing:
        raise EntitlementError(f"{path.name}: missing columns {missing}")
    snapshot = snapshot.apply(lambda column: column.str.strip())
    lines = pd.Series(range(2, len(snapshot) + 2), index=snapshot.index)
    flag = snapshot["entitled"].str.lower()
    bad_flag = ~flag.isin(TRUE_WORDS | FALSE_WORDS)
    if bad_flag.any():
        raise EntitlementError(f"{path.name}: 'entitled' is not true/false on lines {lines[bad_flag].tolist()[:10]}")
    repeated = snapshot["account_id"].duplicated(keep=False)
    if repeated.any():
        raise EntitlementError(f"{path.name}: account ids listed more than once on lines {lines[repeated].tolist()[:10]}")
    return snapshot.assign(entitled=flag.isin(TRUE_WORDS))


def attribute_calls(priced: pd.DataFrame, snapshot: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (attributed calls with customer_id and sequence_number, suspense calls)."""
    accounts = snapshot.set_index("account_id")
    known = priced["user_id"].isin(accounts.index)
    joined = priced.join(accounts[["customer_id", "sequence_number", "default_sequence_number", "entitled"]], on="user_id")
    sequence = joined["sequence_number"].where(joined["sequence_number"].fillna("") != "", joined["default_sequence_number"])
    joined = joined.assign(sequence_number=sequence.fillna(""), used_default_sequence=joined["sequence_number"].fillna("") == "")
    reason = pd.Series("", index=joined.index)
    reason = reason.mask(joined["sequence_number"] == "", NO_SEQUENCE_NUMBER)
    reason = reason.mask(known & ~joined["entitled"].fillna(False).astype(bool), NOT_ENTITLED)
    reason = reason.mask(~known, UNKNOWN_ACCOUNT)
    in_suspense = reason != ""
    attributed = joined[~in_suspense].drop(columns=["default_sequence_number", "entitled"])
    suspense = joined[in_suspense].assign(reason_code=reason[in_suspense]).drop(columns=["default_sequence_number", "entitled"])
    return attributed.reset_index(drop=True), suspense.reset_index(drop=True)
