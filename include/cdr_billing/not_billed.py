"""The rows a month does not bill, in one shape for the billing database and the report: what
happened to each (kind, reason), where it came from (file, row, transaction) and what an
operator needs to act on it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd

COLUMNS = ["kind", "reason_code", "source_file", "source_row", "transaction_id", "detail"]

# (kind, the intermediate file of each CDR file that holds them, reason when it has no reason_code)
KINDS = (
    ("quarantined", "quarantined", None),
    ("duplicate", "duplicates", "DUPLICATE_TRANSACTION"),
    ("unbillable", "unbillable", None),
    ("combined", "combined", None),
    ("suspense", "suspense", None),
)


def _detail(frame: pd.DataFrame) -> pd.Series:
    """What an operator needs to act on a non-billed row: the account, the number range, and
    its seconds (the minutes the alerts and the Billing page give)."""
    columns = [
        c for c in ("user_id", "number_range", "session_id", "duration_seconds") if c in frame
    ]
    return pd.Series(
        [json.dumps(record) for record in frame[columns].to_dict("records")],
        index=frame.index,
        dtype=str,
    )


def _shaped(kind: str, reason: str | None, frame: pd.DataFrame) -> pd.DataFrame:
    detail = frame["original_values"] if "original_values" in frame else _detail(frame)
    return pd.DataFrame(
        {
            "kind": kind,
            "reason_code": frame["reason_code"] if reason is None else reason,
            "source_file": frame["source_file"],
            "source_row": frame["source_row"].astype("int64"),
            "transaction_id": frame["transaction_id"] if "transaction_id" in frame else "",
            "detail": detail,
        }
    )


def rows_not_billed(
    read_kind: Callable[[str], pd.DataFrame], skip_kinds: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Every row not billed, kind by kind; `read_kind(file name)`: that file of every CDR file."""
    frames = []
    for kind, name, reason in KINDS:
        frame = pd.DataFrame() if kind in skip_kinds else read_kind(name)
        if not frame.empty:
            frames.append(_shaped(kind, reason, frame))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
