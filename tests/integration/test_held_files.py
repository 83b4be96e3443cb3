"""A held file's way out: an operator who has checked the changed content releases it (the
command or the run's `release_held_files`); the next run bills the new content as a new
batch and the month report says which file changed. Real SFTP servers and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

from integration import test_fetch_stage
from integration.test_fetch_stage import CARRIER, sha256_of

from cdr_billing import ledger
from cdr_billing.contracts import to_xcom
from cdr_billing.tasks.fetch import fetch_cdr_files
from cdr_billing.tasks.run import start_run
from cdr_devkit.airflow_env import PROJECT_ROOT

site = (
    test_fetch_stage.site
)  # the fetch tests' fixture: two SFTP servers, a fresh ledger, the mailbox
EXTRA_CALL = (
    "T202610-9999999,S1,voice,SUB-00061,2026-10-10T10:00:00Z,,,60,60,+4670,+4687,1,1,,X,0,o,p\n"
)


def _change_carrier_file(site) -> str:
    for root in (site.primary_root, site.secondary_root):
        with (root / CARRIER).open("a") as handle:
            handle.write(EXTRA_CALL)
    return sha256_of(site.primary_root / CARRIER)


def _carrier_file(meta: dict) -> dict:
    return next(f for f in meta["files"] if f["name"] == "carrier_cdr_202610.csv")


def test_a_released_file_is_billed_from_the_next_run_and_named_as_changed(site):
    site.serve_both()
    billed_sha = _carrier_file(site.fetch("run-1"))["sha256"]
    new_sha = _change_carrier_file(site)
    held = site.fetch("run-2")
    assert _carrier_file(held)["sha256"] == billed_sha and held["file_counts"] == {
        **held["file_counts"],
        "held": 1,
        "downloaded": 1,
    }
    assert [f["sha256"] for f in ledger.held_files(site.engine, "2026-10")] == [new_sha]

    meta = start_run(
        "2026-10", None, "run-3", site.config, release_held_files=["carrier_cdr_202610.csv"]
    )
    released = to_xcom(fetch_cdr_files(meta, site.config))
    assert _carrier_file(released)["sha256"] == new_sha and released["file_counts"]["held"] == 0
    assert ledger.held_files(site.engine, "2026-10") == []
    assert ledger.changed_files(site.engine, "2026-10") == [
        {
            "source": "carrier",
            "name": "carrier_cdr_202610.csv",
            "billed_sha256": billed_sha,
            "released_sha256": new_sha,
        }
    ]
    assert (
        _carrier_file(to_xcom(fetch_cdr_files(meta, site.config)))["sha256"] == new_sha
    )  # a retried fetch: the same
    assert (
        _carrier_file(site.fetch("run-4"))["sha256"] == new_sha
    )  # later runs bill the released content
    statuses = sorted(
        (r.status, r.sha256 == new_sha) for r in site.ledger() if r.name == "carrier_cdr_202610.csv"
    )
    assert statuses == [("accepted", True), ("replaced", False)]


def _ledger_command(site, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cdr_billing.ledger", *args],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
    )


def test_the_release_command_lists_releases_and_refuses_what_is_not_held(site):
    site.serve_both()
    site.fetch("run-1")
    refused = _ledger_command(site, "release", "carrier_cdr_202610.csv")
    assert (
        refused.returncode == 2 and "no held file named 'carrier_cdr_202610.csv'" in refused.stderr
    )
    new_sha = _change_carrier_file(site)
    site.fetch("run-2")
    listed = _ledger_command(site, "held", "--month", "2026-10")
    assert (
        listed.returncode == 0
        and "carrier_cdr_202610.csv" in listed.stdout
        and new_sha[:12] in listed.stdout
    )
    done = _ledger_command(site, "release", "carrier_cdr_202610.csv", "--source", "carrier")
    assert done.returncode == 0 and f"content {new_sha[:12]} released" in done.stdout
    assert _carrier_file(site.fetch("run-3"))["sha256"] == new_sha
