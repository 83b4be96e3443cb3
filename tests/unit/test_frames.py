import numpy as np
import pandas as pd
import pyarrow as pa

from cdr_billing.frames import FEW_RUNS, kept_runs, rows_where


def wide_rows(count: int) -> pd.DataFrame:
    """Text in Arrow chunks (as read from a CSV), numbers and a nullable column."""
    text = pa.chunked_array([pa.array([f"T{n:06d}" for n in range(start, min(start + 700, count))], pa.large_string())
                             for start in range(0, count, 700)])  # fmt: skip
    return pd.DataFrame({"id": pd.Series(text, dtype="str"), "seconds": np.arange(count),
                         "share": pd.array([None, 5] * (count // 2), dtype="Int32")})  # fmt: skip


def test_kept_runs_are_the_runs_of_true():
    starts, stops = kept_runs(np.array([True, True, False, True, False, False, True]))
    assert starts.tolist() == [0, 3, 6] and stops.tolist() == [2, 4, 7]
    assert [a.tolist() for a in kept_runs(np.zeros(3, dtype=bool))] == [[], []]


def test_few_long_runs_are_sliced_without_copying_the_text_and_equal_a_filter():
    frame = wide_rows(4 * FEW_RUNS)
    mask = np.ones(len(frame), dtype=bool)
    mask[[0, 1500, 1501, len(frame) - 1]] = False  # a file less its few bad rows
    kept = rows_where(frame, mask)
    assert kept.equals(frame[mask].reset_index(drop=True))
    source_buffers = {chunk.buffers()[2].address for chunk in frame["id"].array._pa_array.chunks}
    assert {chunk.buffers()[2].address for chunk in kept["id"].array._pa_array.chunks} <= source_buffers


def test_scattered_rows_are_filtered():
    frame = wide_rows(3000)
    mask = np.arange(len(frame)) % 3 == 0
    kept = rows_where(frame, mask)
    assert kept.equals(frame[mask].reset_index(drop=True))
    assert rows_where(frame, np.zeros(len(frame), dtype=bool)).empty
