"""The task contracts: records survive XCom's JSON, and a changed contract fails at once."""

from __future__ import annotations

import json

import pytest

from cdr_billing.acquire import FetchedFile
from cdr_billing.contracts import (
    DedupedMonth,
    FetchedMonth,
    FileCounts,
    ReconciledFile,
    Run,
    from_xcom,
    to_xcom,
)

RUN = Run("2026-10", "manual__1", "/work/2026-10/manual__1", None, True, ("a.csv",))
FILE = FetchedFile("cdr", "carrier", "a.csv", "/in/a.csv", 10, 0, "ab" * 32, "primary")


def test_a_record_round_trips_through_json_with_its_nested_records():
    fetched = FetchedMonth(
        RUN, (FILE,), "primary", ({"server": "x", "error": "down"},), FileCounts(1, 0, 0, 0, 2, 0)
    )
    wire = json.loads(json.dumps(to_xcom(fetched)))
    assert wire["files"][0]["name"] == "a.csv" and wire["run"]["release_held_files"] == ["a.csv"]
    assert from_xcom(FetchedMonth, wire) == fetched


def test_a_list_of_records_and_a_subclass_round_trip():
    file = ReconciledFile("a.csv", "carrier", "ab" * 32, "/w/f", "/w/f/docs", 5, 1, 1, 3, 1)
    month = DedupedMonth(RUN, (file,), "/w/docs.html", 5, 1, 1, 0)
    assert from_xcom(list[ReconciledFile], to_xcom([file])) == [file]
    assert from_xcom(DedupedMonth, json.loads(json.dumps(to_xcom(month)))) == month


def test_a_missing_or_unknown_field_fails_naming_it():
    wire = to_xcom(RUN)
    with pytest.raises(TypeError, match="run_id"):
        from_xcom(Run, {k: v for k, v in wire.items() if k != "run_id"})
    with pytest.raises(TypeError, match="batch"):
        from_xcom(Run, {**wire, "batch": 1})
