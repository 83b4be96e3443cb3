"""A month's peak memory follows its largest file, not its number of files.

The DAG's task functions chained in one process (`bench_pipeline.run_project`, through
`cdr_billing.tasks.chain`) bill a month of two files and a month of six files of the same size,
each in a fresh process. A file's rows take well over 100 MiB here while it is billed, and a
month that kept each file's rows grew about 70 MiB a file; what the month keeps per file is its
records, its call hashes (8 bytes a call) and what the allocators keep for reuse after the
task functions' writes (quarantine, ledger, the audit files): 19-22 MiB a file on this machine.
"""

from __future__ import annotations

from pathlib import Path

from cdr_devkit.bench_data import ensure_month
from cdr_devkit.bench_pipeline import OUTCOMES, spawn_contender

CALLS_PER_FILE = 150_000
MAX_GROWTH_PER_FILE_MIB = 35  # half of what keeping each file's rows costs


def _billed_in_own_process(base: Path, files: int) -> dict:
    month = ensure_month(base, CALLS_PER_FILE * files, files, log=lambda _: None)
    out = base / f"run_{files}"
    out.mkdir()
    return spawn_contender(
        "project", month, base, files, 11, out, validation=False, max_rss_gib=None, workers=1
    )


def test_peak_memory_does_not_grow_with_the_number_of_files(tmp_path):
    two, six = _billed_in_own_process(tmp_path, 2), _billed_in_own_process(tmp_path, 6)

    for run, files in ((two, 2), (six, 6)):
        counts = run["counts"]
        assert counts["read"] == sum(counts[outcome] for outcome in OUTCOMES)
        assert counts["read"] > CALLS_PER_FILE * files
    growth_per_file = (six["peak_rss_mib"] - two["peak_rss_mib"]) / 4
    assert growth_per_file < MAX_GROWTH_PER_FILE_MIB, (two["peak_rss_mib"], six["peak_rss_mib"])
