"""The task bodies moved out of one module into cdr_billing.tasks (issue 25) without changing
what a month bills: the benchmark's generated month, run through the DAG's task functions
(cdr_billing.tasks.chain, as `make bench-pipeline` does), gives the lines and counts the
pipeline gave before the move (commit 10287a9, where the benchmark chained the domain
functions itself). The lines are compared by digest of their CSV."""

from __future__ import annotations

import hashlib

from cdr_devkit.bench_data import ensure_month
from cdr_devkit.bench_pipeline import run_project

BEFORE_THE_MOVE = {
    "lines_sha256": "b7596f91dc76017a43bde583f52782c8efa8d96bf93f3b133799a1119900bf05",
    "counts": {
        "read": 20006,
        "billed": 18400,
        "quarantined": 20,
        "duplicates": 6,
        "combined": 101,
        "not_billable": 778,
        "unbillable": 414,
        "suspense": 287,
        "prepaid": 0,  # the benchmark's month has no prepaid account
    },
}


def test_the_benchmark_month_bills_as_before_the_task_bodies_moved(tmp_path):
    month = ensure_month(tmp_path / "months", 20_000, 2, 5, log=lambda _: None)
    lines, counts, seconds = run_project(
        month.cdr_files,
        month.tariff,
        month.entitlements,
        month.month,
        tmp_path / "work",
        validation=False,
        workers=2,
    )
    assert (
        hashlib.sha256(lines.to_csv(index=False).encode()).hexdigest()
        == (BEFORE_THE_MOVE["lines_sha256"])
    )
    assert counts == BEFORE_THE_MOVE["counts"]
    assert {"check_cdr_file_only", "bill_cdr_file", "dedupe_calls"} <= set(seconds)
