import pandas as pd
import pytest

from cdr_billing.attribute import EntitlementError, attribute_calls, load_entitlements

SNAPSHOT = """account_id,user_principal_name,customer_id,sequence_number,default_sequence_number,entitled,last_login
0001,a@x,C1,101,100,true,2026-10-01
0002,b@x,C1,,100,true,2026-10-01
0003,c@x,C2,201,200,false,2026-10-01
"""


@pytest.fixture
def snapshot(tmp_path):
    path = tmp_path / "entitlements.csv"
    path.write_text(SNAPSHOT)
    return load_entitlements(path)


def test_calls_go_to_cost_center_default_or_suspense(snapshot):
    calls = pd.DataFrame({"user_id": ["0001", "0002", "0003", "0404"], "cost_minor": [1, 2, 3, 4]})
    attributed, suspense = attribute_calls(calls, snapshot)
    assert attributed[["user_id", "customer_id", "sequence_number"]].values.tolist() == [
        ["0001", "C1", "101"],
        ["0002", "C1", "100"],
    ]
    assert suspense[["user_id", "reason_code"]].values.tolist() == [["0003", "NOT_ENTITLED"], ["0404", "UNKNOWN_ACCOUNT"]]


def test_account_ids_keep_leading_zeros(snapshot):
    assert snapshot["account_id"].tolist()[0] == "0001"


def test_duplicate_accounts_are_rejected_with_lines(tmp_path):
    path = tmp_path / "entitlements.csv"
    path.write_text(SNAPSHOT + "0001,a2@x,C2,201,200,true,2026-10-01\n")
    with pytest.raises(EntitlementError, match=r"lines \[2, 5\]"):
        load_entitlements(path)
