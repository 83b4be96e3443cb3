"""Month-wide duplicates and the parts of partial calls, from each file's hashes and parts.

A call delivered again (same source and transaction id) in a later file of the month, or
again in the same file, is a duplicate: the first delivery wins. The parts of partial calls
are set aside to be combined month-wide (a session may span files). Each file's accepted rows
are not rewritten: the positions set aside are kept, and the rating reads the rest.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa

from cdr_billing.canonical import COMPLETION_PARTIAL
from cdr_billing.frames import rows_where


def partial_rows(accepted: pd.DataFrame) -> pd.DataFrame:
    """A file's parts of partial calls, each with its position among the file's accepted rows."""
    partial = partial_parts(accepted).to_numpy()
    return rows_where(accepted, partial).assign(position=np.flatnonzero(partial))


class SetAside(NamedTuple):
    """A file's rows that are not plain calls."""

    positions: pd.DataFrame  # position among the accepted rows, and whether it is a duplicate
    in_session: pd.DataFrame  # the parts of partial calls that are not duplicates


def set_aside(partial: pd.DataFrame, repeated: np.ndarray) -> SetAside:
    """A file's rows that are not plain calls; `partial`: its partial_rows, `repeated`: the
    mask of its rows that repeat an earlier call."""
    again = repeated[partial["position"].to_numpy()]
    in_session = partial[~again]
    duplicates = np.flatnonzero(repeated)
    positions = pd.DataFrame(
        {
            "position": np.concatenate([duplicates, in_session["position"].to_numpy()]),
            "duplicate": np.arange(len(duplicates) + len(in_session)) < len(duplicates),
        }
    )
    return SetAside(positions, in_session.drop(columns="position").reset_index(drop=True))


class FileCalls(NamedTuple):
    """A file's rows as the rating reads them."""

    rows: pd.DataFrame  # the accepted rows, then the combined partial calls the file heads
    is_call: np.ndarray  # all but the rows set aside: rating selects the wide rows once
    duplicates: pd.DataFrame  # the rows set aside that repeat an earlier call


def file_calls(
    accepted: pa.Table, session_calls: pa.Table, set_aside_rows: pd.DataFrame
) -> FileCalls:
    """A file's calls: its accepted rows less those set aside, and the combined calls it heads."""
    positions = set_aside_rows["position"].to_numpy()
    rows = pa.concat_tables(
        [accepted, session_calls.select(accepted.column_names).cast(accepted.schema)]
    )
    is_call = np.ones(rows.num_rows, dtype=bool)
    is_call[positions] = False
    duplicates = accepted.take(positions[set_aside_rows["duplicate"].to_numpy()])
    return FileCalls(rows.to_pandas(), is_call, duplicates.to_pandas())


def partial_parts(calls: pd.DataFrame) -> pd.Series:
    """The parts of partial calls (status 2 with a session id), which combine_partial_calls
    merges."""
    return (calls["completion_status"] == COMPLETION_PARTIAL) & (calls["session_id"] != "")


def _in_part_order(parts: pd.DataFrame) -> pd.DataFrame:
    """Parts by session, then start, then part number as a number (digits of any length: by
    length, then text, leading zeros dropped; empty is 0), then transaction id."""
    digits = parts["transaction_part_number"].str.lstrip("0")
    keyed = parts.assign(_part_length=digits.str.len(), _part_digits=digits)
    order = ["source", "session_id", "start_utc", "_part_length", "_part_digits", "transaction_id"]
    return keyed.sort_values(order, kind="stable").drop(columns=["_part_length", "_part_digits"])


class Combined(NamedTuple):
    calls: pd.DataFrame  # the other calls, then one call per session
    merged: pd.DataFrame  # the parts merged into their session's first part


def combine_partial_calls(calls: pd.DataFrame) -> Combined:
    """Merge the parts (status 2) of each session into one call: the first part (_in_part_order),
    with the summed duration (and provider cost). Returns (calls, the parts merged away)."""
    partial = partial_parts(calls)
    if not partial.any():
        return Combined(calls, calls.iloc[0:0])
    parts = _in_part_order(calls[partial])
    session = ["source", "session_id"]
    first = ~parts.duplicated(session)
    sums = parts.groupby(session)[["duration_seconds", "provider_cost_micro"]].sum(min_count=1)
    heads = (
        parts[first]
        .drop(columns=["duration_seconds", "provider_cost_micro"])
        .join(sums, on=session)
    )
    merged = parts[~first].assign(reason_code="PART_OF_SESSION")
    combined = pd.concat([calls[~partial], heads[calls.columns]], ignore_index=True)
    return Combined(combined.astype(calls.dtypes.to_dict()), merged.reset_index(drop=True))


class SessionsOfFile(NamedTuple):
    """The combined calls whose first part is in one file, and the parts merged into them."""

    session_calls: pd.DataFrame
    combined: pd.DataFrame


def combine_month_sessions(partial_per_file: list[pd.DataFrame]) -> list[SessionsOfFile]:
    """Combine the month's partial calls (a session may span files); each combined call goes,
    with the parts merged into it, to the file of its first part. `partial_per_file`: each
    file's parts that are not duplicates (set_aside), in delivery order."""
    partial = pd.concat(
        [parts.assign(part_index=n) for n, parts in enumerate(partial_per_file)], ignore_index=True
    )
    heads, merged = combine_partial_calls(partial)
    session = ["source", "session_id"]
    head_file = merged[session].merge(heads[[*session, "part_index"]], on=session, how="left")
    merged = merged.assign(part_index=head_file["part_index"].to_numpy())

    def of_file(frame: pd.DataFrame, n: int) -> pd.DataFrame:
        return frame[frame["part_index"] == n].drop(columns="part_index").reset_index(drop=True)

    return [
        SessionsOfFile(of_file(heads, n), of_file(merged, n)) for n in range(len(partial_per_file))
    ]
