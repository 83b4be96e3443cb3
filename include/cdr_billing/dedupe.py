"""Month-wide duplicates and partial-call parts, found from the key columns of every file.

A call delivered again (same source and transaction id) in a later file of the month, or
again in the same file, is a duplicate: the first delivery wins. The parts of partial calls
are set aside to be combined month-wide (a session may span files). Each file's accepted rows
are not rewritten: the positions set aside are kept, and the rating reads the rest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cdr_billing import rate

CALL_KEY = ["source", "transaction_id"]  # the columns duplicates are found by
PARTIAL_KEY = ["completion_status", "session_id"]  # the columns partial parts are found by
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: multiplies the bits of a hash apart


def repeated_per_file(keys_per_file: list[pd.DataFrame]) -> list[np.ndarray]:
    """For each file's CALL_KEY columns, in file order: a mask of the rows whose call came in
    an earlier file (or earlier in the same file).

    A 64-bit hash of each transaction id finds the few rows that may repeat one (measured on
    10M ids: about 1 s, where hashing the text ids in pandas took 5.3 s); those rows are then
    compared by their exact keys, so a hash collision never makes a call a duplicate."""
    ids = [pc.fill_null(pa.chunked_array(pa.array(keys["transaction_id"])).cast(pa.large_string()), "") for keys in keys_per_file]
    width = max((pc.max(pc.binary_length(i)).as_py() or 0 for i in ids), default=0)
    hashes = [np.concatenate([np.zeros(0, np.uint64), *(text_hashes(chunk, width) for chunk in i.chunks)]) for i in ids]
    ordered = np.sort(np.concatenate([np.zeros(0, np.uint64), *hashes]))
    collided = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    candidates = [np.flatnonzero(pd.Series(h).isin(collided).to_numpy()) for h in hashes]
    candidate_keys = pd.concat(
        [
            keys.iloc[rows][CALL_KEY].assign(file=n, row=rows)
            for n, (keys, rows) in enumerate(zip(keys_per_file, candidates, strict=True))
        ],
        ignore_index=True,
    )  # file order, then row order: the first delivery wins
    again = candidate_keys[candidate_keys[CALL_KEY].duplicated().to_numpy()]
    masks = [np.zeros(len(keys), dtype=bool) for keys in keys_per_file]
    for n, rows in again.groupby("file")["row"]:
        masks[n][rows.to_numpy()] = True
    return masks


def text_hashes(values: pa.Array, width: int) -> np.ndarray:
    """A 64-bit hash of each text value of at most `width` UTF-8 bytes: equal texts, equal hashes."""
    _, offset_buffer, data_buffer = values.buffers()
    offsets = np.frombuffer(offset_buffer, dtype=np.int64, count=len(values) + 1, offset=values.offset * 8)
    data = np.frombuffer(data_buffer or b"", dtype=np.uint8)[offsets[0] : offsets[-1]]
    lengths = np.diff(offsets)
    words = np.zeros((len(values), (width + 7) // 8 * 8), dtype=np.uint8)  # each value's bytes, zero padded
    if len(values) and (lengths == lengths[0]).all():
        words[:, : lengths[0]] = data.reshape(len(values), lengths[0])
    else:
        rows = np.repeat(np.arange(len(values)), lengths)
        words[rows, np.arange(len(data)) - np.repeat(offsets[:-1] - offsets[0], lengths)] = data
    hashes = lengths.astype(np.uint64) * _MIX
    with np.errstate(over="ignore"):
        for word in words.view(np.uint64).T:
            hashes ^= word
            hashes *= _MIX
            hashes ^= hashes >> np.uint64(31)
    return hashes


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
