from datetime import UTC, datetime

import pandas as pd
import pytest

from cdr_billing.aggregate import USER_KEYS, aggregate_users
from cdr_billing.attribute import attribute_calls, snapshot_at, stale_accounts
from cdr_billing.entitlements import EntitlementError, from_file

SNAPSHOT = (
    "account_id,user_principal_name,customer_id,sequence_number,default_sequence_number,"
    "entitled,last_login\n"
    """0001,a@x,C1,101,100,true,2026-10-01
0002,b@x,C1,,100,true,2020-01-01
0003,c@x,C2,201,200,false,2026-10-01
"""
)
OCTOBER = datetime(2026, 10, 5, tzinfo=UTC)


def history(tmp_path, *snapshots: tuple[str, str]) -> pd.DataFrame:
    frames = []
    for number, (name, text) in enumerate(snapshots, start=1):
        path = tmp_path / name
        path.write_text(text)
        snapshot = from_file(path, OCTOBER, "Europe/Stockholm")
        frames.append(
            snapshot.rows.assign(snapshot_id=number, taken_at=pd.Timestamp(snapshot.taken_at))
        )
    return pd.concat(frames, ignore_index=True)


def calls(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [a for a, _ in rows],
            "cost_minor": 1,
            "start_utc": pd.to_datetime([t for _, t in rows]).tz_localize("UTC"),
        }
    )


def test_calls_go_to_cost_center_default_or_suspense(tmp_path):
    snapshots = history(tmp_path, ("entitlements_2026-10-01.csv", SNAPSHOT))
    attributed, suspense, *_ = attribute_calls(
        calls(*[(a, "2026-10-05") for a in ("0001", "0002", "0003", "0404")]), snapshots, 1
    )
    assert attributed[["user_id", "customer_id", "sequence_number"]].values.tolist() == [
        ["0001", "C1", "101"],
        ["0002", "C1", "100"],
    ]
    assert suspense[["user_id", "reason_code"]].values.tolist() == [
        ["0003", "NOT_ENTITLED"],
        ["0404", "UNKNOWN_ACCOUNT"],
    ]


def test_the_snapshot_valid_at_the_call_applies_and_the_months_covers_earlier_calls(tmp_path):
    later = SNAPSHOT.replace("0001,a@x,C1,101", "0001,a@x,C1,102")
    snapshots = history(
        tmp_path, ("entitlements_2026-10-10.csv", SNAPSHOT), ("entitlements_2026-10-20.csv", later)
    )
    moments = pd.Series(pd.to_datetime(["2026-10-01", "2026-10-15", "2026-10-25"], utc=True))
    assert snapshot_at(moments, snapshots, month_snapshot=2).tolist() == [2, 1, 2]
    attributed, *_ = attribute_calls(
        calls(("0001", "2026-10-12"), ("0001", "2026-10-21")), snapshots, 2
    )
    assert attributed["sequence_number"].tolist() == ["101", "102"]


def test_user_codes_sum_an_account_once_per_cost_center_and_currency(tmp_path):
    """An account in two snapshots with the same terms is one user line; a cost center changed
    between them makes two; so does a second currency. The attribution's codes give the lines
    that grouping by the texts gives."""
    later = SNAPSHOT.replace("0001,a@x,C1,101", "0001,a@x,C1,102")
    snapshots = history(tmp_path, ("e1.csv", SNAPSHOT), ("e2.csv", SNAPSHOT), ("e3.csv", later))
    snapshots["taken_at"] = pd.to_datetime(
        snapshots["snapshot_id"].map({1: "2026-10-01", 2: "2026-10-10", 3: "2026-10-20"}), utc=True
    )
    moments = ["2026-10-05", "2026-10-12", "2026-10-22", "2026-10-05", "2026-10-12", "2026-10-23"]
    priced = calls(
        *zip(["0001", "0001", "0001", "0002", "0002", "0002"], moments, strict=True)
    ).assign(
        cost_minor=[1, 2, 4, 8, 16, 32],
        billed_seconds=[60, 60, 60, 60, 60, 60],
        currency=["SEK"] * 5 + ["EUR"],
    )
    attributed, _, user_codes, _ = attribute_calls(priced, snapshots, 3)
    assert user_codes[0] == user_codes[1] != user_codes[2]
    lines = aggregate_users(attributed, user_codes)
    assert lines[[*USER_KEYS, "total_minor", "call_count"]].values.tolist() == [
        ["C1", "101", "SEK", "0001", 3, 2],
        ["C1", "102", "SEK", "0001", 4, 1],
        ["C1", "100", "SEK", "0002", 24, 2],
        ["C1", "100", "EUR", "0002", 32, 1],
    ]
    assert lines.equals(aggregate_users(attributed))


def test_account_ids_keep_leading_zeros(tmp_path):
    assert history(tmp_path, ("e.csv", SNAPSHOT))["account_id"].tolist()[0] == "0001"


def test_duplicate_accounts_are_rejected_with_lines(tmp_path):
    with pytest.raises(EntitlementError, match=r"lines \[2, 5\]"):
        history(tmp_path, ("e.csv", SNAPSHOT + "0001,a2@x,C2,201,200,true,2026-10-01\n"))


def test_stale_accounts_are_flagged(tmp_path):
    snapshots = history(tmp_path, ("e.csv", SNAPSHOT))
    attribution = attribute_calls(
        calls(("0001", "2026-10-05"), ("0002", "2026-10-05"), ("0002", "2026-10-06")),
        snapshots,
        1,
    )
    cutoff = pd.Timestamp("2026-05-01", tz="UTC")
    assert stale_accounts(snapshots, attribution.history_rows, cutoff) == [
        {"account_id": "0002", "customer_id": "C1", "last_login": "2020-01-01", "calls": 2}
    ]


CORRECTED = (
    SNAPSHOT.replace("0003,c@x,C2,201,200,false", "0003,c@x,C2,201,200,true")
    + "0404,d@x,C3,301,300,true,2026-11-01\n"
)


def test_a_correction_pinned_by_a_refresh_bills_what_the_older_snapshots_could_not(tmp_path):
    """0003 (not entitled) and 0404 (unknown) in the October snapshots, fixed in a November one
    that the month is pinned to: their calls are billed by it; 0001's cost-center change on the
    15th still bills each of its calls as of its time."""
    moved = SNAPSHOT.replace("0001,a@x,C1,101", "0001,a@x,C1,102")
    snapshots = history(
        tmp_path,
        ("entitlements_2026-10-01.csv", SNAPSHOT),
        ("entitlements_2026-10-15.csv", moved),
        ("entitlements_2026-11-03.csv", CORRECTED),
    )
    month_calls = calls(
        ("0001", "2026-10-05"),
        ("0001", "2026-10-20"),
        ("0003", "2026-10-05"),
        ("0404", "2026-10-20"),
    )
    attributed, suspense, *_ = attribute_calls(month_calls, snapshots, 3)
    assert attributed[
        ["user_id", "customer_id", "sequence_number", "entitlement_snapshot"]
    ].values.tolist() == [
        ["0001", "C1", "101", 1],
        ["0001", "C1", "102", 2],
        ["0003", "C2", "201", 3],
        ["0404", "C3", "301", 3],
    ]
    assert suspense.empty
    # not refreshed
    attributed, suspense, *_ = attribute_calls(
        month_calls, snapshots[snapshots["snapshot_id"] < 3], 2
    )
    assert suspense[["user_id", "reason_code"]].values.tolist() == [
        ["0003", "NOT_ENTITLED"],
        ["0404", "UNKNOWN_ACCOUNT"],
    ]


def test_an_account_revoked_mid_month_is_not_billed_by_an_older_snapshot(tmp_path):
    revoked = SNAPSHOT.replace("0001,a@x,C1,101,100,true", "0001,a@x,C1,101,100,false")
    snapshots = history(
        tmp_path,
        ("entitlements_2026-10-01.csv", SNAPSHOT),
        ("entitlements_2026-10-15.csv", revoked),
    )
    attributed, suspense, *_ = attribute_calls(
        calls(("0001", "2026-10-05"), ("0001", "2026-10-20")), snapshots, 2
    )
    assert attributed["start_utc"].dt.day.tolist() == [5]
    assert suspense[["user_id", "reason_code", "entitlement_snapshot"]].values.tolist() == [
        ["0001", "NOT_ENTITLED", 2]
    ]


def test_an_entitled_account_without_a_customer_id_is_held(tmp_path):
    snapshots = history(
        tmp_path, ("entitlements_2026-10-01.csv", SNAPSHOT.replace("0001,a@x,C1,", "0001,a@x,,"))
    )
    attributed, suspense, *_ = attribute_calls(
        calls(("0001", "2026-10-05"), ("0002", "2026-10-05")), snapshots, 1
    )
    assert attributed["user_id"].tolist() == ["0002"]
    assert suspense[["user_id", "reason_code"]].values.tolist() == [["0001", "NO_CUSTOMER_ID"]]
