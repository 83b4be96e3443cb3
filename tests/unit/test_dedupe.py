"""The month's duplicates: hashed candidates, then exact keys (first delivery wins)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from cdr_billing import hashing


def _keys(sources: list[str], ids: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        {"source": pd.Series(sources, dtype=str), "transaction_id": pd.Series(ids, dtype=str)}
    )


def _repeated(frames: list[pd.DataFrame]) -> list[np.ndarray]:
    """Each file's call hashes computed on their own, as each file's task does."""
    return hashing.repeated_per_file(
        [hashing.call_hashes(frame) for frame in frames], lambda n, rows: frames[n].iloc[rows]
    )


def _expected(frames: list[pd.DataFrame]) -> np.ndarray:
    return pd.concat(frames, ignore_index=True).duplicated(hashing.CALL_KEY).to_numpy()


@pytest.mark.parametrize("seed", range(5))
def test_repeats_equal_pandas_on_ids_of_any_width_and_text(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "b", "0", "ü", "€", " "]
    ids = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10))) for _ in range(4000)]
    frames = [
        _keys([rng.choice("st") for _ in ids[n : n + 700]], ids[n : n + 700])
        for n in range(0, len(ids), 700)
    ]

    repeated = _repeated(frames)

    assert [len(mask) for mask in repeated] == [len(frame) for frame in frames]
    assert np.array_equal(np.concatenate(repeated), _expected(frames))
    assert _expected(frames).sum() > 100  # the case is not trivial


def test_first_delivery_wins_across_files_and_sources() -> None:
    first = _keys(["a", "a", "b", "a"], ["T1", "T12345678901", "T1", "T1"])
    empty = _keys([], [])
    second = _keys(["a", "b", "a"], ["T12345678901", "T1", "T99"])

    repeated = _repeated([first, empty, second])

    assert [mask.tolist() for mask in repeated] == [
        [False, False, False, True],
        [],
        [True, True, False],
    ]


def test_equal_length_ids_hash_apart_and_a_missing_id_is_not_an_empty_one() -> None:
    ids = [f"T202610-{n:09d}" for n in range(50_000)]
    hashes = hashing.text_hashes(pa.array(ids, pa.large_string()))
    assert len(np.unique(hashes)) == len(ids)

    repeated = _repeated([_keys(["a", "a", "a"], [None, "", None])])
    assert repeated[0].tolist() == [False, False, True]


def test_an_ids_hash_does_not_depend_on_the_ids_hashed_with_it() -> None:
    """Files are hashed in their own tasks: a short id among long ones, or alone, hashes the
    same."""
    ids = ["T1", "T12345678", "T123456789012345678", "", "ü€", "T1\x00"]
    alone = [hashing.text_hashes(pa.array([i], pa.large_string()))[0] for i in ids]
    together = hashing.text_hashes(pa.array(ids, pa.large_string()))
    assert together.tolist() == alone
    assert len(set(alone)) == len(ids)  # a trailing zero byte is not padding
