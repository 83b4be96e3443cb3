import pytest

from cdr_billing.acquire import FileRequest, UnsafeRemoteNameError, safe_local_name, select_names


@pytest.mark.parametrize(
    "name", ["../etc/passwd", "/abs.csv", "a/b.csv", "..", "bad\nname.csv", "tab\t.csv", ""]
)
def test_hostile_remote_names_are_refused(name):
    with pytest.raises(UnsafeRemoteNameError):
        safe_local_name(name)


def test_patterns_match_case_insensitively_and_pick_the_month():
    request = FileRequest("cdr", "carrier", "/cdr", "carrier_cdr_202610*.csv")
    names = ["CARRIER_CDR_202610.CSV", "carrier_cdr_202609.csv", "carrier_cdr_202610_b.csv"]
    assert select_names(names, request) == ["CARRIER_CDR_202610.CSV", "carrier_cdr_202610_b.csv"]


def test_newest_only_takes_the_last_name():
    request = FileRequest("tariff", "tariff", "/ref", "tariff*.csv", newest_only=True)
    assert select_names(["tariff_2026-01.csv", "tariff_2026-10.csv"], request) == [
        "tariff_2026-10.csv"
    ]


def test_a_months_snapshot_history_is_the_one_in_force_on_its_first_day_and_every_later_one():
    names = [
        "entitlements_2026-08-30.csv",
        "entitlements_2026-09-30.csv",
        "entitlements_2026-10-01.csv",
        "entitlements_2026-10-15.csv",
        "entitlements_2026-11-02.csv",
        "entitlements.csv",
    ]
    request = FileRequest(
        "entitlements", "entitlements", "/reference", "entitlements*.csv", dated_from="2026-10-01"
    )
    assert select_names(names, request) == names[2:5]
    later = FileRequest(
        "entitlements", "entitlements", "/reference", "entitlements*.csv", dated_from="2026-10-02"
    )
    assert select_names(names, later) == names[2:5]
    assert select_names(["entitlements.csv"], request) == ["entitlements.csv"]
    assert select_names(names[:2], request) == names[1:2]  # only older ones: the newest of them
