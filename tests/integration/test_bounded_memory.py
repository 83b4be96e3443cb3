"""A month's peak memory follows its largest file, not its number of files.

The project's read -> aggregate path (`bench_pipeline.run_project`, the DAG's tasks chained in
one process) bills a month of two files and a month of six files of the same size, each in a
fresh process. A file's rows take well over 100 MiB here while it is billed; what the month
keeps per file is its per-user sums (bounded by the users, not the calls), its call hashes
(8 bytes a call) and what the allocators keep for reuse: about 9 MiB a file on this machine.
"""

from __future__ import annotations

from pathlib import Path

from cdr_devkit.bench_data import ensure_month
from cdr_devkit.bench_pipeline import OUTCOMES, spawn_contender

CALLS_PER_FILE = 150_000
MAX_GROWTH_PER_FILE_MIB = 20  # the text of one more file's rows alone would be 28 MB


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
