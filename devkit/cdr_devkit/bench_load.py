"""`make bench-load`: the billing load against its limit, a bare `COPY` of the same rows.

Bills the benchmark month (`make bench-pipeline`'s, cached in `.bench/pipeline/`) once with the
DAG's task functions (kept in `.bench/load/`), writes its billed calls as the load's own CSV to
a file, and times on a throwaway PostgreSQL (`cdr_devkit.postgres`: fsync and full-page writes
off as in the tests, otherwise stock, no wal_level=minimal), best of N rounds:

1. the limit: a server-side `COPY ... FROM '<file>' (FORMAT csv)` of that file into a table
   without index, key or partition (created in the same transaction, committed);
2. the project's load of the same billed calls (`load.load_month`, one frame per CDR file as
   the load task reads them): one transaction, the batch's own partition with its index, its
   foreign key and its partition constraint.

Prints both, the project's ratio (target: at most 1.5x) and checks that both tables hold the
same number of rows.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from cdr_billing import database, lineage, storage
from cdr_billing.load import Batch, load_month
from cdr_billing.migrations import upgrade
from cdr_billing.schema import billed_call, with_derived_columns
from cdr_devkit.airflow_env import PROJECT_ROOT
from cdr_devkit.bench_data import BenchMonth
from cdr_devkit.bench_pipeline import limit_bench_arguments, run_project
from cdr_devkit.postgres import LocalPostgres

DEFAULT_ROOT = PROJECT_ROOT / ".bench" / "load"
TARGET_RATIO = 1.5
BARE_TABLE = "bare_billed_call"
COLUMNS = [column.name for column in billed_call.columns]
EXCEPTION_COLUMNS = ["kind", "reason_code", "source_file", "source_row", "transaction_id", "detail"]


class Timed(NamedTuple):
    """One round: its wall seconds and the rows the table holds after it."""

    seconds: float
    rows: int


def billed_month(month: BenchMonth, root: Path) -> Path:
    """The work dir of the month billed by the DAG's task functions (SQLite billing DB, no
    Great Expectations: only the billed calls are used), billed again when the billed calls'
    part file changed its name (its format)."""
    from cdr_devkit.bench_dag import write_config

    work = root / "billed" / month.root.name
    if not (work / "done").exists() or not _billed_call_parts(work):
        shutil.rmtree(work, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        os.environ["CDR_BILLING_CONFIG"] = str(write_config(root))
        run_project(
            month.cdr_files, month.tariff, month.entitlements, month.month, work, validation=False
        )
        (work / "done").write_text("billed\n", encoding="utf-8")
    return work


def _billed_call_parts(work: Path) -> list[Path]:
    """Each CDR file's billed calls (the bill task's `attributed` part) in the work dir."""
    return sorted(work.rglob(storage.file_name("attributed")))


def billed_calls(work: Path) -> Iterator[pd.DataFrame]:
    """The month's billed calls in the `billed_call` shape, one frame per CDR file, as the load
    task reads them."""
    for attributed in _billed_call_parts(work):
        combined = attributed.with_name(storage.file_name("combined"))
        yield lineage.billed_calls(
            storage.read_frame(attributed),
            storage.read_frame(combined),
        )


def write_csv(work: Path, path: Path) -> int:
    """The billed calls as CSV (batch id 0, every column the table has, the load's derived key
    too) in a file the server can read; returns the rows written."""
    rows = 0
    with path.open("wb") as out:
        for frame in billed_calls(work):
            for start in range(0, len(frame), database.INSERT_BATCH_ROWS):
                batch = with_derived_columns(
                    billed_call, frame.iloc[start : start + database.INSERT_BATCH_ROWS]
                )
                out.write(database.csv_bytes(batch.assign(batch_id=0)[COLUMNS]))
            rows += len(frame)
    path.chmod(0o644)
    return rows


def bare_copy(engine: Engine, csv_path: Path, _round: int) -> Timed:
    """Create a table without index or key and COPY the file into it, committed."""
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {BARE_TABLE}"))
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {BARE_TABLE} (LIKE billed_call)"))
        columns = ", ".join(COLUMNS)
        conn.execute(
            text(f"COPY {BARE_TABLE} ({columns}) FROM '{csv_path.resolve()}' (FORMAT csv)")
        )
    seconds = time.perf_counter() - started
    with engine.connect() as conn:
        return Timed(seconds, conn.execute(text(f"SELECT count(*) FROM {BARE_TABLE}")).scalar())


def project_load(engine: Engine, work: Path, month: BenchMonth, round_no: int) -> Timed:
    """The project's load of the billed calls as a new batch (the batch's other parts empty),
    committed; the batch's partition is dropped afterwards."""
    empty = pd.DataFrame()
    exceptions = pd.DataFrame(columns=EXCEPTION_COLUMNS)
    batch = Batch(empty, empty, empty, billed_calls(work), exceptions)
    started = time.perf_counter()
    result = load_month(engine, str(month.month), f"bench-load-{round_no}", batch, {})
    seconds = time.perf_counter() - started
    with engine.begin() as conn:
        rows = conn.execute(
            text("SELECT count(*) FROM billed_call WHERE batch_id = :b"), {"b": result.batch_id}
        ).scalar()
        conn.execute(text(f"DROP TABLE billed_call_batch_id_{result.batch_id}"))
    return Timed(seconds, rows)


def best_of(rounds: int, measure: Callable[[int], Timed]) -> Timed:
    """The fastest of the rounds (the machine's other work only ever slows a round down)."""
    return min((measure(k) for k in range(rounds)), key=lambda timed: timed.seconds)


def run(month: BenchMonth, root: Path, rounds: int) -> dict:
    """Time the bare COPY and the project's load; return the figures (also kept in
    root/bench_load.json)."""
    work = billed_month(month, root)
    csv_path = root / "billed_calls.csv"
    rows = write_csv(work, csv_path)
    with LocalPostgres() as postgres:
        engine = create_engine(postgres.url)
        upgrade(engine)
        bare = best_of(rounds, lambda k: bare_copy(engine, csv_path, k))
        project = best_of(rounds, lambda k: project_load(engine, work, month, k))
        engine.dispose()
    csv_size = csv_path.stat().st_size
    csv_path.unlink()
    if not rows == bare.rows == project.rows:
        raise RuntimeError(f"rows differ: csv {rows}, bare {bare.rows}, project {project.rows}")
    facts = {
        "calls": month.rows,
        "billed_calls": rows,
        "csv_bytes": csv_size,
        "rounds": rounds,
        "bare_copy_seconds": bare.seconds,
        "project_load_seconds": project.seconds,
        "ratio": project.seconds / bare.seconds,
    }
    (root / "bench_load.json").write_text(json.dumps(facts, indent=1), encoding="utf-8")
    return facts


def format_report(facts: dict) -> str:
    """Both timings and the ratio."""
    verdict = "met" if facts["ratio"] <= TARGET_RATIO else "NOT met"
    return "\n".join(
        [
            f"Loading {facts['billed_calls']:,} billed calls ({facts['calls']:,} CDR rows) "
            f"into PostgreSQL, best of {facts['rounds']}",
            f"  bare COPY from a file, no index or key   {facts['bare_copy_seconds']:>8.2f} s",
            f"  the project's load (batch, partition,    {facts['project_load_seconds']:>8.2f} s",
            "  index, foreign key, one transaction)",
            f"project/bare: {facts['ratio']:.2f}x (target {TARGET_RATIO}x: {verdict})",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    bench = limit_bench_arguments(__doc__.splitlines()[0], DEFAULT_ROOT, argv)
    facts = run(bench.month, bench.root, bench.repeat)
    print(format_report(facts))
    return 0 if facts["ratio"] <= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())
