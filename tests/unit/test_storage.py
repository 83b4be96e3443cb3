"""The run's intermediate files: both formats round-trip exactly; a process that read them
exits cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cdr_billing import storage

INCLUDE = Path(__file__).resolve().parents[2] / "include"


def _calls() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": pd.Series(["t1", "t2", "t3"], dtype="str"),
            "destination_party": pd.Series(["+46701234567", "0046701234568", ""], dtype="str"),
            "start_utc": pd.to_datetime(
                ["2026-10-01 00:00:01", "2026-10-15 12:00:00", "2026-10-31 23:59:59"], utc=True
            ),
            "duration_seconds": np.array([0, 61, 3600], dtype=np.int64),
            "revenue_share_bp": pd.array([None, 1250, 0], dtype="Int32"),
        }
    )


@pytest.mark.parametrize("name", ["accepted.arrow", "lines.parquet"])
def test_a_frame_reads_back_as_written_and_no_partial_file_is_left(tmp_path: Path, name: str):
    storage.write_frame(_calls(), tmp_path / name)
    pd.testing.assert_frame_equal(storage.read_frame(tmp_path / name), _calls())
    for rows, ids in (([0, 2], ["t1", "t3"]), ([2, 0], ["t3", "t1"]), ([], [])):
        chosen = storage.read_frame(
            tmp_path / name, ["transaction_id"], np.array(rows, dtype=np.int64)
        )
        assert chosen["transaction_id"].tolist() == ids
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_file_rewritten_while_read_keeps_the_readers_rows(tmp_path: Path):
    path = tmp_path / "accepted.arrow"
    storage.write_frame(_calls(), path)
    table = storage.read_table(path)  # memory-mapped
    storage.write_frame(_calls().iloc[:1], path)
    assert table.column("transaction_id").to_pylist() == ["t1", "t2", "t3"]
    assert storage.read_table(path).num_rows == 1


RUNS = 40
READ_AND_EXIT = """
import sys
from pathlib import Path
import pandas as pd
from cdr_billing import storage
folder = Path(sys.argv[1])
for name in ("accepted.arrow", "lines.parquet"):
    storage.write_frame(pd.DataFrame({"a": ["x" * 10] * 1000, "b": range(1000)}), folder / name)
    storage.read_frame(folder / name)
"""


def test_a_process_that_read_the_files_exits_cleanly(tmp_path: Path):
    """A Parquet file read through a Python file object aborted one exit in five to ten here
    (apache/arrow#50482): RUNS runs miss that with a chance of 0.9**40, about 1.5%."""

    def run(n: int) -> subprocess.CompletedProcess:
        folder = tmp_path / str(n)
        folder.mkdir()
        env = {"PYTHONPATH": str(INCLUDE), "PATH": "/usr/bin:/bin"}
        return subprocess.run(
            [sys.executable, "-c", READ_AND_EXIT, str(folder)],
            capture_output=True,
            text=True,
            env=env,
        )

    # one after the other: side by side, they aborted less often
    runs = [run(n) for n in range(RUNS)]
    assert [(r.returncode, r.stderr.strip()[-200:]) for r in runs] == [(0, "")] * RUNS
