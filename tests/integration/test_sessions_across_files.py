"""A partial call whose parts arrive in two files of the month is still one call: the task
stages run file by file, but combine partial parts month-wide."""

import hashlib
import json
from decimal import Decimal

from cdr_billing import stages
from cdr_billing.config import load_config
from cdr_billing.months import BillingMonth
from cdr_devkit.sample_data import generate_month
from oracle import expected_lines


def _item(role: str, source: str, path) -> dict:
    return {"role": role, "source": source, "name": path.name, "local_path": str(path),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # fmt: skip


def test_a_session_split_across_two_files_is_billed_as_one_call(tmp_path, postgres, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BILLING_DB", json.dumps(postgres.connection(postgres.create_database("sessions"))))
    root = tmp_path / "month"
    generate_month(root, BillingMonth(2026, 10))
    carrier = (root / "cdr/carrier/carrier_cdr_202610.csv").read_text().splitlines(keepends=True)
    first, second = tmp_path / "carrier_cdr_202610_a.csv", tmp_path / "carrier_cdr_202610_b.csv"
    first.write_text("".join(carrier[:402]))  # header + rows 0-400: row 400 is part 1 of session SP0000
    second.write_text(carrier[0] + "".join(carrier[402:]))  # row 401, its part 2, opens the second file
    cdr = [_item("cdr", "conferencing", root / "cdr/conferencing/conferencing_cdr_2026-10.xlsx"),
           _item("cdr", "carrier", first), _item("cdr", "carrier", second),
           _item("cdr", "pbx", root / "cdr/pbx/pbx_cdr_2026-10.csv")]  # fmt: skip
    references = [_item("tariff", "tariff", next((root / "reference").glob("tariff*.csv"))),
                  _item("entitlements", "entitlements", next((root / "reference").glob("entitlements_*.csv")))]  # fmt: skip
    (tmp_path / "work").mkdir()
    meta = {"billing_month": "2026-10", "run_id": "sessions", "work_dir": str(tmp_path / "work"), "files": cdr + references}
    config = load_config()
    references = stages.load_references(meta, config)
    deduped = stages.dedupe_calls(meta, [stages.validate_file(meta, item, config) for item in cdr], config)
    billed = [stages.bill_file(deduped, part, references, config) for part in deduped["parts"]]
    month = stages.aggregate_lines(deduped, billed, references)
    lines = stages._read(month, "lines")
    got = {(r.customer_id, r.sequence_number): Decimal(int(r.total_minor)) / 100 for r in lines.itertuples()}
    assert got == expected_lines(root, 2026, 10)
    assert month["counts"]["combined"] == 20  # SP0000's second part, in the other file, merged too
