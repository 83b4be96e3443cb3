"""A run's work directory: the intermediate files its tasks hand on (Parquet, or Arrow IPC for
what the next task reads whole), its Great Expectations results and its report. Local or on
object storage (`work_connection`); each CDR file has a folder of its own."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from cdr_billing import storage
from cdr_billing.config import PipelineConfig
from cdr_billing.contracts import Run


def run_work_dir(config: PipelineConfig, billing_month: str, run_id: str) -> storage.Location:
    """The directory of one run of one month."""
    safe_run_id = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)
    root = config.work_root.rstrip("/")
    return storage.location(f"{root}/{billing_month}/{safe_run_id}", config.work_connection)


def folder(run: Run) -> storage.Location:
    return storage.location(run.work_dir, run.work_connection)


def run_file(run: Run, name: str) -> storage.Location:
    """A file of the run as a whole (the month's lines, the report)."""
    return folder(run) / name


def file_folder(run: Run, sha256: str) -> storage.Location:
    """The folder of one CDR file's intermediate files, named by its content."""
    return folder(run) / "files" / sha256[:16]


def write(run: Run, name: str, frame: pd.DataFrame) -> None:
    storage.write_frame(frame, run_file(run, storage.file_name(name)))


def read(run: Run, name: str) -> pd.DataFrame:
    return storage.read_frame(run_file(run, storage.file_name(name)))


def part_file(run: Run, part_dir: str, name: str) -> storage.Location:
    """One intermediate file of one CDR file (`part_dir`: its folder)."""
    return storage.location(part_dir, run.work_connection) / storage.file_name(name)


def write_part(run: Run, part_dir: str, name: str, frame: pd.DataFrame) -> None:
    storage.write_frame(frame, part_file(run, part_dir, name))


def read_part(
    run: Run,
    part_dir: str,
    name: str,
    columns: list[str] | None = None,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    return storage.read_frame(part_file(run, part_dir, name), columns, rows)


def read_parts(run: Run, part_dirs: list[str], name: str) -> pd.DataFrame:
    """One intermediate file of every CDR file, concatenated in the files' order."""
    frames = [read_part(run, part_dir, name) for part_dir in part_dirs]
    return pd.concat(frames, ignore_index=True)
