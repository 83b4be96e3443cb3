"""Great Expectations on a file's accepted rows: every row, the columns its suite names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdr_billing import read, validate
from cdr_billing.config import load_config
from cdr_billing.months import BillingMonth
from cdr_devkit.sample_data import generate_month


def _failed(results: Path, frame, name: str, profile, month, config) -> tuple[list[str], dict]:
    """The expectations a frame fails, and its result JSON."""
    with pytest.raises(validate.FileValidationError) as failed:
        validate.ExpectationRunner(results).validate_file(
            frame, name, profile, month, config.billing
        )
    return list(failed.value.expectations), json.loads((results / f"{name}.json").read_text())


def test_the_suite_sees_every_row_and_misses_no_column_it_names(tmp_path):
    month, config = BillingMonth(2026, 8), load_config()
    generate_month(tmp_path, month)
    carrier, profile = (
        tmp_path / "cdr/carrier/carrier_cdr_202608.csv",
        config.profile_for("carrier"),
    )
    accepted = validate.check_rows(
        read.read_cdr_file(carrier, profile).assign(source="carrier"),
        profile,
        month,
        config.billing,
    )
    accepted = accepted.accepted

    bad_last_number = accepted.assign(
        destination_party=[*accepted["destination_party"].iloc[:-1], "46-70X"]
    )
    failed, result = _failed(
        tmp_path / "gx", bad_last_number, "last_row.csv", profile, month, config
    )
    assert failed == ["expect_column_values_to_match_regex"]
    (regex,) = [r["result"] for r in result["results"] if not r["success"]]
    assert (regex["element_count"], regex["unexpected_count"]) == (len(accepted), 1)

    failed, _ = _failed(
        tmp_path / "gx", accepted.drop(columns="user_id"), "no_user.csv", profile, month, config
    )
    assert "expect_table_columns_to_match_set" in failed
