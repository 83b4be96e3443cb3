"""`make bench-pipeline` on a tiny month: the project, the DuckDB peer and the Polars peer bill it
identically."""

from __future__ import annotations

from cdr_devkit.bench_pipeline import OUTCOMES, format_report, run_benchmark


def test_project_duckdb_and_polars_bill_a_small_month_identically(tmp_path):
    result = run_benchmark(calls=20_000, files=2, base=tmp_path, validation=False, repeat=2)

    assert result["lines_identical"], result["lines_detail"]
    assert result["counts_identical"], result["counts"]
    assert result["counts"]["polars"] == result["counts"]["duckdb"] == result["counts"]["project"]
    assert result["lines_detail"].count(", identical") == 2, result["lines_detail"]
    counts = result["counts"]["project"]
    assert counts["read"] == sum(counts[outcome] for outcome in OUTCOMES)
    # the generated flaws are all there: 10 invalid kinds, 3 duplicates and 50 two-part calls per
    # file, one across files
    assert (counts["quarantined"], counts["duplicates"], counts["combined"]) == (20, 6, 101)
    assert min(counts["unbillable"], counts["suspense"], counts["not_billable"]) > 0
    report = format_report(result, validation=False)
    assert "billing lines:" in report
    assert len(result["rounds"]) == 2 and all(
        set(r) == {"parse", "project", "duckdb", "polars"} for r in result["rounds"]
    )
    assert "vs DuckDB per round:" in report and "vs Polars per round:" in report
    assert "project vs Polars:" in report and "Polars 2." in report
