"""Great Expectations on a file's accepted rows: every row, the columns its suite names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
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


def _broken(expectation: tuple[str, dict], rows):
    """The accepted rows with the first row's value made one the expectation refuses."""
    name, kwargs = expectation
    column, value = kwargs["column"], None
    if name == "ExpectColumnValuesToBeBetween":
        high = kwargs["max_value"]
        value = high if kwargs.get("strict_max") else high + 1
    elif name == "ExpectColumnValuesToBeInSet":
        value = "XXX" if isinstance(kwargs["value_set"][0], str) else 99
    elif name == "ExpectColumnValuesToMatchRegex":
        value = "46-70X"
    broken = rows.copy()
    broken[column] = broken[column].astype(object)
    broken.loc[0, column] = pd.NaT if column == "start_utc" and value is None else value
    if column == "start_utc":
        broken[column] = pd.to_datetime(broken[column], utc=True).astype("datetime64[us, UTC]")
    return broken


@pytest.mark.parametrize(
    ("source", "name"),
    [("carrier", "carrier/carrier_cdr_202608.csv"), ("conferencing", "conferencing/*.xlsx")],
)
def test_each_expectation_of_a_rule_fails_in_gx_where_the_rule_fails_the_row(
    tmp_path, source, name
):
    """Each expectation the row rules give GX refuses a value its rule refuses: the row checks
    and the suite are one definition. (GX's not-null on the ids refuses a missing id, not the
    empty text the row check refuses: read writes "" for a missing value.)"""
    month, config = BillingMonth(2026, 8), load_config()
    generate_month(tmp_path, month)
    profile = config.profile_for(source)
    (path,) = (tmp_path / "cdr").glob(name)
    raw = read.read_cdr_file(path, profile).assign(source=source)
    accepted = validate.check_rows(raw, profile, month, config.billing).accepted.head(200)
    limits = validate.Limits.of(month, config.billing)
    runner = validate.ExpectationRunner(tmp_path / "gx")
    columns = validate._suite_columns(profile)
    rules = [rule for rule in validate.row_rules(profile) if rule.gx]
    tried = 0
    for n, expectation in enumerate(validate.suite(profile, limits)):
        owners = [rule for rule in rules if expectation in rule.expectations(limits)]
        if not owners:  # the suite's own: the columns, one row per call, the types
            continue
        broken = _broken(expectation, accepted[columns])
        with pytest.raises(validate.FileValidationError) as failed:
            runner.validate_file(broken, f"{source}_{n}.csv", profile, month, config.billing)
        assert expectation[0].removeprefix("Expect") in _camel(failed.value.expectations)
        if expectation[1]["column"] not in ("transaction_id", "user_id"):
            values = validate.RowValues(broken.assign(start_of_usage=""), broken, profile, limits)
            assert any(bool(np.asarray(rule.failing(values))[0]) for rule in owners), owners
        tried += 1
    assert tried == len({repr(e) for rule in rules for e in rule.expectations(limits)})


def _camel(types: tuple[str, ...]) -> set[str]:
    """GX's expectation types ("expect_column_values_to_be_in_set") as their class names less
    "Expect" ("ColumnValuesToBeInSet")."""
    return {"".join(word.title() for word in t.removeprefix("expect_").split("_")) for t in types}


def _results(path: Path) -> list[dict]:
    """A result JSON's per-expectation results (what was expected, of how many rows, which
    failed), less its run's metadata and the random ids GX gives each expectation."""
    results = json.loads(path.read_text())["results"]
    for result in results:
        result["expectation_config"].pop("id")
    return results


def test_without_gx_batch_fingerprint_every_result_is_the_same(tmp_path):
    """The runner skips GX's fingerprint of the batch (it hashes every value and checks
    nothing): a file that passes and one that fails give the very results they give with it."""
    from great_expectations.execution_engine import pandas_execution_engine

    month, config = BillingMonth(2026, 8), load_config()
    generate_month(tmp_path, month)
    profile = config.profile_for("carrier")
    raw = read.read_cdr_file(tmp_path / "cdr/carrier/carrier_cdr_202608.csv", profile)
    accepted = validate.check_rows(
        raw.assign(source="carrier"), profile, month, config.billing
    ).accepted
    failing = accepted.assign(
        destination_party=[*accepted["destination_party"].iloc[:-1], "46-70X"]
    )
    runs: dict[str, dict[str, list[dict]]] = {}
    for fingerprint in (True, False):
        results = tmp_path / f"gx_{fingerprint}"
        runner = validate.ExpectationRunner(results)
        if fingerprint:  # GX's own threshold back, as if the runner did not skip it
            pandas_execution_engine.HASH_THRESHOLD = 1e9
        passed = runner.validate_file(accepted, "good.csv", profile, month, config.billing)
        with pytest.raises(validate.FileValidationError):
            runner.validate_file(failing, "bad.csv", profile, month, config.billing)
        markers = json.dumps(json.loads(passed.read_text())["meta"])
        assert ("pandas_data_fingerprint" in markers) is fingerprint
        runs[str(fingerprint)] = {
            name: _results(results / f"{name}.json") for name in ("good.csv", "bad.csv")
        }
    assert validate.ExpectationRunner(tmp_path / "again") and (
        pandas_execution_engine.HASH_THRESHOLD == 0
    )
    assert runs["True"] == runs["False"]
    assert [r["success"] for r in runs["False"]["bad.csv"]].count(False) == 1
