"""Aggregate attributed calls into billing lines."""

from __future__ import annotations

import pandas as pd

LINE_KEYS = ["customer_id", "sequence_number", "currency"]


def aggregate_lines(attributed: pd.DataFrame) -> pd.DataFrame:
    """One line per (customer id, sequence number, currency): total, calls, seconds."""
    lines = (
        attributed.groupby(LINE_KEYS, sort=True)
        .agg(total_minor=("cost_minor", "sum"), call_count=("cost_minor", "size"), billed_seconds=("billed_seconds", "sum"))
        .reset_index()
    )
    return lines.astype({"total_minor": "int64", "call_count": "int64", "billed_seconds": "int64"})
