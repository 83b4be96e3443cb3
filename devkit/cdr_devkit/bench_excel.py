"""`make bench-excel`: the project's Excel reading against openpyxl on one 300k-row file.

Writes a conferencing export of N legs (openpyxl, write-only), then reads it three ways in
this process: openpyxl (read-only, values only, the peer), bare fastexcel, and the
project's `read_cdr_file` (fastexcel plus header search and canonical mapping). Checks
that all three see the same leg ids, and prints wall times and ratios.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cdr_devkit.airflow_env import PROJECT_ROOT
from cdr_devkit.sample_data import CONFERENCING_HEADER


def write_file(path: Path, rows: int) -> None:
    from openpyxl import Workbook

    rng = random.Random(1)
    book = Workbook(write_only=True)
    sheet = book.create_sheet("Usage")
    sheet.append(["Conferencing usage report"])
    sheet.append(CONFERENCING_HEADER)
    start = datetime(2026, 10, 1, 8)
    for n in range(rows):
        begun = start + timedelta(seconds=n * 8)
        duration = rng.randint(30, 5400)
        sheet.append(
            [
                f"CONF-{n // 4:06d}",
                f"L{n:08d}",
                f"{rng.randrange(10**6):07d}",
                "+46850512345",
                begun,
                begun + timedelta(seconds=duration),
                duration,
                round(duration * 0.00075, 4),
                "EUR",
            ]
        )
    book.save(path)


def read_openpyxl(path: Path) -> list[str]:
    from openpyxl import load_workbook

    book = load_workbook(path, read_only=True, data_only=True)
    rows = book.worksheets[0].iter_rows(values_only=True)
    header = next(row for row in rows if row and row[0] == "Conference ID")
    leg = header.index("Leg ID")
    ids = [str(row[leg]) for row in rows]
    book.close()
    return ids


def read_fastexcel(path: Path) -> list[str]:
    import fastexcel

    return (
        fastexcel.read_excel(str(path))
        .load_sheet(0, header_row=1, dtypes="string")
        .to_pandas()["Leg ID"]
        .tolist()
    )


def read_project(path: Path) -> list[str]:
    from cdr_billing.config import load_config
    from cdr_billing.read import read_cdr_file

    return read_cdr_file(path, load_config().profiles["conferencing_xlsx"])[
        "transaction_id"
    ].tolist()


class Timed(NamedTuple):
    """How long a reader took, and the leg ids it read."""

    seconds: float
    ids: list[str]


def timed(label: str, read, path: Path) -> Timed:
    started = time.perf_counter()
    ids = read(path)
    elapsed = time.perf_counter() - started
    print(f"{label:<34}{elapsed:>8.2f} s{len(ids) / elapsed:>14,.0f} rows/s")
    return Timed(elapsed, ids)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    path = PROJECT_ROOT / ".bench" / f"conferencing_{args.rows}.xlsx"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        print(f"writing {args.rows:,} legs to {path} ...")
        write_file(path, args.rows)
    peer = timed("openpyxl (read-only, peer)", read_openpyxl, path)
    bare = timed("fastexcel (bare)", read_fastexcel, path)
    ours = timed("project read_cdr_file (fastexcel)", read_project, path)
    if not peer.ids == bare.ids == ours.ids:
        print("MISMATCH: the readers disagree on the leg ids")
        return 1
    print(f"same {len(ours.ids):,} leg ids from all three readers")
    print(
        f"speed-up vs openpyxl: bare fastexcel {peer.seconds / bare.seconds:.1f}x, "
        f"project reader {peer.seconds / ours.seconds:.1f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
