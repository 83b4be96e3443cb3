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

Location = Any  # pathlib.Path or airflow.sdk.ObjectStoragePath: both have `/`, open, mkdir, read_text, write_text


def location(text: str, conn_id: str | None = None) -> Location:
    """A local path, or an ObjectStoragePath for a URL (with the Airflow connection holding its credentials)."""
    if "://" not in text:
        return Path(text)
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(text, conn_id=conn_id)


def write_parquet(frame: pd.DataFrame, path: Location) -> None:
    """Write a frame as a Parquet file: LZ4, no dictionary pages (ids and numbers are mostly
    distinct). Measured on 1M accepted calls: write + read 0.43 s (zstd 0.59 s, the defaults
    about twice that) for a 36 MB file (zstd 14 MB): intermediate files are read once or twice."""
    with path.open("wb") as handle:
        frame.to_parquet(handle, index=False, compression="lz4", use_dictionary=False)


def read_table(path: Location, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file as an Arrow table (only `columns`, when given)."""
    with path.open("rb") as handle:
        return pq.read_table(handle, columns=columns)


def read_parquet(path: Location, columns: list[str] | None = None, rows: np.ndarray | None = None) -> pd.DataFrame:
    """Read a Parquet file (only `columns` and the rows at positions `rows`, when given)."""
    table = read_table(path, columns)
    return (table if rows is None else table.take(rows)).to_pandas()


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
