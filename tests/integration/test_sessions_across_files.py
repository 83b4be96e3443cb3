"""A partial call whose parts arrive in two files of the month is still one call: the task
tasks run file by file, but combine partial parts month-wide."""

import json
from decimal import Decimal

from cdr_billing.config import load_config
from cdr_billing.months import BillingMonth
from cdr_devkit.sample_data import generate_month
from oracle import expected_lines
from stage_chain import bill_month, item, lines_of


def test_a_session_split_across_two_files_is_billed_as_one_call(tmp_path, postgres, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_BILLING_DB",
        json.dumps(postgres.connection(postgres.create_database("sessions"))),
    )
    root = tmp_path / "month"
    generate_month(root, BillingMonth(2026, 10))
    carrier = (root / "cdr/carrier/carrier_cdr_202610.csv").read_text().splitlines(keepends=True)
    first, second = tmp_path / "carrier_cdr_202610_a.csv", tmp_path / "carrier_cdr_202610_b.csv"
    first.write_text(
        "".join(carrier[:402])
    )  # header + rows 0-400: row 400 is part 1 of session SP0000
    second.write_text(
        carrier[0] + "".join(carrier[402:])
    )  # row 401, its part 2, opens the second file
    cdr = [
        item("cdr", "conferencing", root / "cdr/conferencing/conferencing_cdr_2026-10.xlsx"),
        item("cdr", "carrier", first),
        item("cdr", "carrier", second),
        item("cdr", "pbx", root / "cdr/pbx/pbx_cdr_2026-10.csv"),
    ]
    references = [
        item("tariff", "tariff", next((root / "reference").glob("tariff*.csv"))),
        item("entitlements", "entitlements", next((root / "reference").glob("entitlements_*.csv"))),
    ]
    month = bill_month(load_config(), "2026-10", tmp_path / "work", cdr, references)
    got = {
        (r.customer_id, r.sequence_number): Decimal(int(r.total_minor)) / 100
        for r in lines_of(month).itertuples()
    }
    assert got == expected_lines(root, 2026, 10)
    assert month.counts.combined == 20  # SP0000's second part, in the other file, merged too
