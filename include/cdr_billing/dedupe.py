"""Month-wide duplicates and partial-call parts, found from the key columns of every file.

A call delivered again (same source and transaction id) in a later file of the month, or
again in the same file, is a duplicate: the first delivery wins. The parts of partial calls
are set aside to be combined month-wide (a session may span files). Each file's accepted rows
are not rewritten: the positions set aside are kept, and the rating reads the rest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cdr_billing import rate

CALL_KEY = ["source", "transaction_id"]  # the columns duplicates are found by
PARTIAL_KEY = ["completion_status", "session_id"]  # the columns partial parts are found by


def repeated_per_file(keys_per_file: list[pd.DataFrame]) -> list[np.ndarray]:
    """For each file's CALL_KEY columns, in file order: a mask of the rows whose call came in
    an earlier file (or earlier in the same file)."""
    keys = pd.concat(keys_per_file, ignore_index=True)
    single_source = len(keys) and (keys["source"] == keys["source"].iloc[0]).all()
    repeated = (keys["transaction_id"].duplicated() if single_source else keys[CALL_KEY].duplicated()).to_numpy()
    bounds = np.cumsum([0, *map(len, keys_per_file)])
    return [repeated[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


def set_aside(statuses: pd.DataFrame, repeated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a file's rows that are not plain calls: (duplicates, parts of partial calls);
    `statuses`: the file's PARTIAL_KEY columns."""
    partial = rate.partial_parts(statuses).to_numpy() & ~repeated
    return np.flatnonzero(repeated), np.flatnonzero(partial)


def plain_calls(accepted: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
    """A file's accepted rows without the positions set aside."""
    if not len(positions):
        return accepted
    keep = np.ones(len(accepted), dtype=bool)
    keep[positions] = False
    return accepted[keep].reset_index(drop=True)
