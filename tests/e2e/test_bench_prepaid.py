"""`make bench-prepaid` at a tiny size on its own running Airflow: every increment measured, the
ledger step timed against the SQL peer, the replays post nothing and the ledger proofs hold (the
exit code), the figures in the JSON. No timing is asserted: the machine is shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ACCOUNTS, FILES, CALLS = 200, 2, 600


def test_the_prepaid_bench_measures_each_increment_and_proves_the_ledger(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AIRFLOW", "CDR_BILLING"))
    }
    command = [
        sys.executable,
        "-m",
        "cdr_devkit.bench_prepaid",
        "--accounts",
        str(ACCOUNTS),
        "--files",
        str(FILES),
        "--calls",
        str(CALLS),
        "--root",
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads((tmp_path / "bench_prepaid.json").read_text())
    assert facts["correct"] and all(check["ok"] for check in facts["checks"])
    assert len(facts["checks"]) == 8
    assert facts["accounts"] == ACCOUNTS and facts["calls"] == CALLS
    increments = facts["increments"]
    assert [row["increment"] for row in increments] == list(range(1, FILES + 1))
    for row in increments:
        assert row["state"] == "success" and row["calls"] == CALLS // FILES
        assert 0 < row["balances_seconds"] <= row["delivered_seconds"] <= row["run_seconds"]
        assert row["debit_calls_seconds"] > 0 and row["peer_seconds"] > 0
        assert row["ledger_copy_debited"] == CALLS // FILES
    summary = facts["summary"]
    for figure in ("balances_seconds", "delivered_seconds", "debit_calls_seconds", "ratio"):
        assert set(summary[figure]) == {"min", "median", "max"}
    replay = facts["replay"]
    assert replay["airflow"]["succeeded"] == FILES
    assert all(tries >= 2 for tries in replay["airflow"]["debit_tries"])  # ran again
    assert not any(replay["in_process"].values())  # and posted nothing
    assert "peer / debit_calls" in done.stdout and "FAIL" not in done.stdout
