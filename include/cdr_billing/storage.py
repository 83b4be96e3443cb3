"""Where a run keeps its intermediate files: a local folder, or object storage through
Airflow's ObjectStoragePath (`work_root: s3://bucket/prefix`, `gs://...`, `file:///shared/...`),
chosen by one setting. Mapped tasks on different workers then share a month's files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# pathlib.Path or airflow.sdk.ObjectStoragePath: both have `/`, open, mkdir, read_text, write_text.
Location = Any


def location(text: str, conn_id: str | None = None) -> Location:
    """A local path, or an ObjectStoragePath for a URL (with the Airflow connection holding its
    credentials)."""
    if "://" not in text:
        return Path(text)
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(text, conn_id=conn_id)


# The files one task hands to the next whole (a file's accepted rows, its call hashes) are
# Arrow IPC, uncompressed: no encoding either way, so writing and reading them take a fraction
# of the time Parquet (LZ4) does, for files some 5x larger.
HANDOFF_FILES = {"accepted", "call_hashes"}
HANDOFF_SUFFIX, KEPT_SUFFIX = ".arrow", ".parquet"


def file_name(name: str) -> str:
    """The file name of an intermediate frame: Arrow IPC for a hand-off, else Parquet."""
    return name + (HANDOFF_SUFFIX if name in HANDOFF_FILES else KEPT_SUFFIX)


def write_frame(frame: pd.DataFrame, path: Location) -> None:
    """Write a frame in the format its file name says: Arrow IPC (.arrow), or Parquet in LZ4
    without dictionary pages (ids and numbers are mostly distinct; zstd takes 1.4x as long).
    A local file is written under another name first and then renamed."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    # an object appears whole
    written = path.with_name(path.name + ".partial") if isinstance(path, Path) else path
    with written.open("wb") as handle:
        if str(path).endswith(HANDOFF_SUFFIX):
            with pa.ipc.new_file(handle, table.schema) as writer:
                writer.write_table(table)
        else:
            pq.write_table(table, handle, compression="lz4", use_dictionary=False)
    if written != path:
        # a reader never sees half a file, and a mapped file is never rewritten under it
        written.replace(path)


def read_table(path: Location, columns: list[str] | None = None) -> pa.Table:
    """Read an Arrow IPC or Parquet file as an Arrow table (only `columns`, when given)."""
    if not str(path).endswith(HANDOFF_SUFFIX):
        if isinstance(path, Path):
            return pq.read_table(str(path), columns=columns)
        # Threads on a Python file can abort the process at exit (apache/arrow#50482).
        with path.open("rb") as handle:
            return pq.read_table(handle, columns=columns, use_threads=False)
    # local: no copy
    with pa.memory_map(str(path)) if isinstance(path, Path) else path.open("rb") as handle:
        table = pa.ipc.open_file(handle).read_all()
    return table if columns is None else table.select(columns)


def read_frame(
    path: Location, columns: list[str] | None = None, rows: np.ndarray | None = None
) -> pd.DataFrame:
    """Read an Arrow IPC or Parquet file (only `columns` and the rows at positions `rows`, when
    given). Increasing positions are selected chunk by chunk (a take joins the chunks first:
    4x slower for a few rows of a CSV file's 1M)."""
    table = read_table(path, columns)
    if rows is None:
        return table.to_pandas()
    if not (np.diff(rows) > 0).all():
        return table.take(rows).to_pandas()
    selected = np.zeros(table.num_rows, dtype=bool)
    selected[rows] = True
    return table.filter(pa.array(selected)).to_pandas()


def publish(local_dir: Path, target: Location) -> None:
    """Copy a local folder (e.g. Great Expectations Data Docs) into the work directory."""
    if isinstance(target, Path):
        shutil.copytree(local_dir, target, dirs_exist_ok=True)
        return
    for file in (f for f in local_dir.rglob("*") if f.is_file()):
        copy = target / file.relative_to(local_dir).as_posix()
        copy.parent.mkdir(parents=True, exist_ok=True)
        with copy.open("wb") as handle:
            handle.write(file.read_bytes())
