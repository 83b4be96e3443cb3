import pandas as pd
import pytest

from cdr_billing.aggregate import (
    aggregate_lines,
    aggregate_users,
    call_totals,
    revenue_share,
    revenue_share_sums,
)
from cdr_billing.alerts import is_unreachable
from cdr_billing.load import LINE_COLUMNS
from cdr_billing.report import (
    OUTCOMES,
    ReconciliationError,
    check_totals,
    reconcile,
    reconcile_file,
)

COUNTS = {
    "read": 13,
    "billed": 4,
    "quarantined": 1,
    "duplicates": 1,
    "not_billable": 2,
    "unbillable": 1,
    "suspense": 1,
    "combined": 1,
    "prepaid": 2,
}


def test_reconcile_accepts_a_complete_account():
    reconcile(COUNTS)


def test_reconcile_refuses_a_lost_row():
    with pytest.raises(ReconciliationError, match="rows read 14"):
        reconcile({**COUNTS, "read": 14})


def test_lines_sum_to_the_calls():
    calls = pd.DataFrame(
        {
            "customer_id": ["C1", "C1", "C2"],
            "sequence_number": ["1", "1", "2"],
            "currency": ["EUR"] * 3,
            "user_id": ["u1", "u2", "u3"],
            "cost_minor": [5, 7, 11],
            "billed_seconds": [60, 60, 30],
        }
    )
    users = aggregate_users(calls)
    assert users[["user_id", "total_minor"]].values.tolist() == [["u1", 5], ["u2", 7], ["u3", 11]]
    lines = aggregate_lines(users)
    assert lines[
        ["customer_id", "total_minor", "call_count", "billed_seconds"]
    ].values.tolist() == [
        ["C1", 12, 2, 120],
        ["C2", 11, 1, 30],
    ]
    check_totals(lines, call_totals(calls))
    with pytest.raises(ReconciliationError):
        check_totals(lines.assign(total_minor=lines["total_minor"] + 1), call_totals(calls))


def test_file_reconciliation_names_the_file():
    reconcile_file({"name": "a.csv", "read": 5, "billable": 3, "quarantined": 1, "duplicate": 1})
    with pytest.raises(ReconciliationError, match="a.csv: rows read 6"):
        reconcile_file(
            {"name": "a.csv", "read": 6, "billable": 3, "quarantined": 1, "duplicate": 1}
        )


def test_unbillable_ranges_are_summed_by_range():
    from cdr_billing.report import unbillable_ranges

    unbillable = pd.DataFrame(
        {
            "number_range": ["88216", "88216", "358"],
            "reason_code": ["NO_TARIFF_PREFIX"] * 2 + ["X"],
            "transaction_id": ["a", "b", "c"],
            "duration_seconds": [60, 30, 600],
        }
    )
    assert unbillable_ranges(unbillable) == [
        {"number_range": "88216", "reason_code": "NO_TARIFF_PREFIX", "calls": 2, "minutes": 1.5},
        {"number_range": "358", "reason_code": "X", "calls": 1, "minutes": 10.0},
    ]


def test_diff_names_changed_new_and_dropped_lines():
    from cdr_billing.report import diff_lines

    key = {"sequence_number": "1", "currency": "EUR", "call_count": 1, "billed_seconds": 60}
    before = pd.DataFrame(
        [
            {"customer_id": "C1", "total_minor": 100, **key},
            {"customer_id": "C2", "total_minor": 50, **key},
        ]
    )
    after = pd.DataFrame(
        [
            {"customer_id": "C1", "total_minor": 130, **key},
            {"customer_id": "C3", "total_minor": 7, **key},
        ]
    )
    assert [
        (d["customer_id"], d["before"], d["after"], d["change"]) for d in diff_lines(before, after)
    ] == [("C1", "1.00", "1.30", "0.30"), ("C2", "0.50", "", "-0.50"), ("C3", "", "0.07", "0.07")]
    assert diff_lines(before, before) == []


def test_billing_file_neutralises_formulas_and_keeps_amounts_exact(tmp_path):
    from openpyxl import load_workbook

    from cdr_billing.billing_file import write

    lines = pd.DataFrame(
        [
            {
                "customer_id": '=HYPERLINK("http://x")',
                "sequence_number": "+1",
                "currency": "EUR",
                "total_minor": 123456,
                "call_count": 3,
                "billed_seconds": 180,
            }
        ]
    )
    columns = {
        "customer_id": "CustomerId",
        "sequence_number": "Seq",
        "billing_month": "Month",
        "total": "Amount",
    }
    csv_path, xlsx_path = write(lines, "2026-10", columns, tmp_path)
    assert csv_path.read_text().splitlines() == [
        "CustomerId,Seq,Month,Amount",
        '"\'=HYPERLINK(""http://x"")",\'+1,2026-10,1234.56',
    ]
    sheet = load_workbook(xlsx_path).active
    assert [c.value for c in sheet[2]] == ['\'=HYPERLINK("http://x")', "'+1", "2026-10", 1234.56]
    assert sheet["D2"].data_type == "n" and sheet["D2"].number_format == "0.00"


def test_revenue_share_is_rounded_half_up_once_per_provider_and_percentage():
    calls = pd.DataFrame(
        {
            "service_provider": ["P", "P", "P", "Q", "R"],
            "currency": ["EUR"] * 5,
            "revenue_share_bp": pd.array([1250, 1250, 3000, 1250, None], dtype="Int32"),
            "cost_minor": [3, 1, 5, 4, 100],
        }
    )
    # as two files
    halves = [
        revenue_share_sums(calls.iloc[:2]),
        revenue_share_sums(calls.iloc[2:]),
    ]
    shares = revenue_share(pd.concat(halves))
    # P 12.5 %: 4 cents -> 0.5 -> 1 (once, not 0.375 + 0.125 per call); P 30 %: 1.5 -> 2;
    # Q: 0.5 -> 1; R carries none
    assert shares.values.tolist() == [
        ["P", "EUR", 1250, 2, 4, 1],
        ["P", "EUR", 3000, 1, 5, 2],
        ["Q", "EUR", 1250, 1, 4, 1],
    ]


def test_an_error_raised_from_an_unreachable_server_is_told_apart_from_bad_data():
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as refused:
            raise RuntimeError("could not record the files") from refused
    except RuntimeError as chained:
        assert is_unreachable(chained)
    operational = type("OperationalError", (Exception,), {})("server closed the connection")
    assert is_unreachable(operational)
    assert not is_unreachable(
        ValueError("carrier.csv: line 3: bad duration")
    ) and not is_unreachable(None)
    assert not is_unreachable(FileNotFoundError("tariff.csv"))


def test_the_report_names_held_and_changed_files_and_credits():
    from cdr_billing.report import build_report, render_html, render_text

    report = build_report(
        "2026-10",
        {"batch_id": 7, "superseded_batch_id": 6},
        dict.fromkeys(("read", *OUTCOMES), 0),
        pd.DataFrame(columns=LINE_COLUMNS),
        pd.DataFrame(columns=["kind", "reason_code"]),
    )
    report.update(
        held_files=[
            {
                "source": "carrier",
                "name": "c_b.csv",
                "sha256": "ab" * 32,
                "first_seen": "2026-11-03",
            }
        ],
        changed_files=[
            {
                "source": "carrier",
                "name": "c_a.csv",
                "billed_sha256": "11" * 32,
                "released_sha256": "22" * 32,
            }
        ],
        credits=[{"currency": "EUR", "calls": 2, "total": "-7.50"}],
        changes=[],
    )
    text, page = render_text(report), render_html(report)
    assert (
        "c_b.csv" in text
        and "abababababab" in text
        and "111111111111 -> 222222222222" in text
        and "-7.50" in text
    )
    assert (
        "<h3>Held files</h3>" in page
        and "<h3>Changed files</h3>" in page
        and "<h3>Credits</h3>" in page
    )


def test_the_report_says_where_prepaid_calls_went_and_lists_refused_ones_masked():
    from cdr_billing.report import build_report, prepaid_settlement, render_html, render_text

    report = build_report(
        "2026-10",
        {"batch_id": 7, "superseded_batch_id": None},
        COUNTS,
        pd.DataFrame(columns=LINE_COLUMNS),
        pd.DataFrame(columns=["kind", "reason_code"]),
    )
    postings = {"debited": 2, "rerated": 1, "unchanged": 4, "reversed": 1, "refused": 1}
    refused = pd.DataFrame(
        [("pbx:77", "+46701234567", "currency SEK is not the account's EUR")],
        columns=["call_key", "account_id", "reason"],
    )
    report["prepaid"] = prepaid_settlement(postings | {"accounts": 2}, refused)
    text, page = render_text(report), render_html(report)
    assert "prepaid=2 (debited to balances)" in text
    assert "<td>prepaid (debited to balances)</td><td align=right>2</td>" in page
    assert "debited=2, rerated=1, unchanged=4, reversed=1, refused=1, accounts=2" in text
    assert "<h3>Prepaid balances</h3>" in page and "<h3>Refused prepaid calls</h3>" in page
    for shown in (text, page):
        assert "pbx:77" in shown and "+4670*****67" in shown and "+46701234567" not in shown


def test_a_month_without_prepaid_calls_leaves_the_settlement_out():
    from cdr_billing.report import build_report, prepaid_settlement, render_html, render_text

    report = build_report(
        "2026-10",
        {"batch_id": 7, "superseded_batch_id": None},
        {**COUNTS, "read": 11, "prepaid": 0},
        pd.DataFrame(columns=LINE_COLUMNS),
        pd.DataFrame(columns=["kind", "reason_code"]),
    )
    nothing = dict.fromkeys(("debited", "rerated", "unchanged", "reversed", "refused"), 0)
    report["prepaid"] = prepaid_settlement(
        nothing | {"accounts": 0}, pd.DataFrame(columns=["call_key", "account_id", "reason"])
    )
    assert "Prepaid balances" not in render_text(report) + render_html(report)
