"""64-bit hashes of the calls' keys, and the rows whose call came earlier: a kernel of the
checks inside a file (validate) and of the month's duplicates across files (dedupe)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cdr_billing import text_bytes

CALL_KEY = ["source", "transaction_id"]  # the columns duplicates are found by
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: multiplies the bits of a hash apart


def call_hashes(keys: pd.DataFrame) -> np.ndarray:
    """A 64-bit hash of each row's transaction id that depends on that id alone, so each
    file's hashes are computed on their own (in the file's task) and compared month-wide."""
    ids = pc.fill_null(
        pa.chunked_array(pa.array(keys["transaction_id"])).cast(pa.large_string()), ""
    )
    return np.concatenate([np.zeros(0, np.uint64), *(text_hashes(chunk) for chunk in ids.chunks)])


def repeated_per_file(
    hashes_per_file: list[np.ndarray], keys_at: Callable[[int, np.ndarray], pd.DataFrame]
) -> list[np.ndarray]:
    """For each file's call hashes, in file order: a mask of the rows whose call came in an
    earlier file (or earlier in the same file). `keys_at(file, rows)`: the CALL_KEY columns of
    those rows of that file.

    Equal hashes find the few rows that may repeat a call (10M hashes sort in 0.1 s); only
    those rows' exact keys are read and compared, so a hash collision never makes a call a
    duplicate."""
    ordered = np.sort(np.concatenate([np.zeros(0, np.uint64), *hashes_per_file]))
    collided = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    candidates = [_rows_among(hashes, collided) for hashes in hashes_per_file]
    masks = [np.zeros(len(hashes), dtype=bool) for hashes in hashes_per_file]
    if not any(len(rows) for rows in candidates):
        return masks
    candidate_keys = pd.concat(
        [
            keys_at(n, rows)[CALL_KEY].assign(file=n, row=rows)
            for n, rows in enumerate(candidates)
            if len(rows)
        ],
        ignore_index=True,
    )  # file order, then row order: the first delivery wins
    again = candidate_keys[candidate_keys[CALL_KEY].duplicated().to_numpy()]
    for n, rows in again.groupby("file")["row"]:
        masks[n][rows.to_numpy()] = True
    return masks


_LOW_BITS = np.uint64((1 << 20) - 1)


def _rows_among(hashes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions of the hashes that are among `values` (few): a bitmap of the values' low 20 bits
    rules out nearly every row first (2.5x faster than a hash-table lookup of each row)."""
    bitmap = np.zeros(int(_LOW_BITS) + 1, dtype=bool)
    bitmap[values & _LOW_BITS] = True
    maybe = np.flatnonzero(bitmap[hashes & _LOW_BITS])
    return maybe[np.isin(hashes[maybe], values)]


def text_hashes(values: pa.Array) -> np.ndarray:
    """A 64-bit hash of each text value from its UTF-8 bytes and length alone: equal texts,
    equal hashes, whatever other values are hashed with them."""
    offsets, data = text_bytes.offsets_and_data(values)
    lengths = np.diff(offsets)
    width = int(lengths.max()) if len(values) else 0
    words = np.zeros(
        (len(values), (width + 7) // 8 * 8), dtype=np.uint8
    )  # each value's bytes, zero padded
    same_length = bool(len(values)) and bool((lengths == width).all())
    if same_length:
        words[:, :width] = data.reshape(len(values), width)
    else:
        rows = np.repeat(np.arange(len(values)), lengths)
        words[rows, np.arange(len(data)) - np.repeat(offsets[:-1], lengths)] = data
    hashes = lengths.astype(np.uint64) * _MIX
    with np.errstate(over="ignore"):
        for n, word in enumerate(words.view(np.uint64).T):
            mixed = (hashes ^ word) * _MIX
            mixed ^= mixed >> np.uint64(31)
            hashes = (
                mixed if same_length else np.where(lengths > 8 * n, mixed, hashes)
            )  # a value's own words only
    return hashes
