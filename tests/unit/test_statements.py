"""Statements: masking per policy, subtotals, totals against the user lines (a mismatch
raises), and a prepaid account's opening and closing balance on a tiny ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import create_engine, insert
from statement_seed import FULL_NUMBERS, SETTINGS, inputs, oracle_totals

from cdr_billing import statements
from cdr_billing.migrations import upgrade
from cdr_billing.privacy import mask_tail
from cdr_billing.schema import balance_entry, prepaid_account


@pytest.mark.parametrize(
    ("number", "digits", "shown"),
    [
        ("+46701234567", 3, "+46701234xxx"),
        ("+46701234567", 0, "+46701234567"),
        ("+46 70 123 45", 4, "+46 70 1xx xx"),
        ("12", 3, "xx"),
        ("", 3, ""),
    ],
)
def test_the_tail_mask_hides_the_last_digits_the_policy_says(number, digits, shown):
    assert mask_tail(number, digits) == shown


def test_numbers_are_masked_per_customer_and_never_stored_in_full():
    frames = statements.build_statements(inputs("r1"), SETTINGS)
    by_customer = frames.calls.merge(frames.statements[["statement_id", "customer_id"]])
    c1 = set(by_customer.loc[by_customer["customer_id"] == "C1", "called_number_shown"])
    assert c1 == {"+46701234xxx", "+4420794xxx", "+46851234xxx"}
    # C2's policy shows numbers in full; C3 does not opt in: no statement
    assert set(by_customer.loc[by_customer["customer_id"] == "C2", "called_number_shown"]) == {
        FULL_NUMBERS[0]
    }
    assert set(frames.statements["customer_id"]) == {"C1", "C2"}
    c1_text = frames.calls[
        frames.calls["statement_id"].isin(
            frames.statements.loc[frames.statements["customer_id"] == "C1", "statement_id"]
        )
    ].to_string()
    assert not any(number in c1_text for number in FULL_NUMBERS)


def test_statement_totals_and_subtotals_equal_an_oracle_summing_row_by_row():
    frames = statements.build_statements(inputs("r1"), SETTINGS)
    oracle = oracle_totals(frames.calls.to_dict("records"))
    for row in frames.statements.itertuples():
        assert Decimal(row.total_minor) / 100 == oracle[row.statement_id]
    u1 = frames.statements.set_index("user_id").loc["u1", "statement_id"]
    subtotals = frames.subtotals[frames.subtotals["statement_id"] == u1]
    destination = subtotals[subtotals["kind"] == "destination"].set_index("group_key")
    assert destination["total_minor"].to_dict() == {"Sweden mobile": 37, "UK London": 155}
    sequence = subtotals[subtotals["kind"] == "sequence"].set_index("group_key")
    assert sequence["total_minor"].to_dict() == {"101": 37, "102": 155}
    calls = frames.calls[frames.calls["statement_id"] == u1]
    assert calls["call_no"].tolist() == [1, 2]  # in start order: the 1 May call first
    assert calls["cost_minor"].tolist() == [155, 37]
    # u3's calls are provider-priced: shown as such
    u3 = frames.statements.set_index("user_id").loc["u3", "statement_id"]
    assert set(frames.calls.loc[frames.calls["statement_id"] == u3, "destination"]) == {
        statements.PROVIDER_PRICED
    }


def test_a_statement_that_does_not_equal_its_user_line_to_the_cent_raises():
    good = inputs("r1")
    wrong_lines = good.user_lines.copy()
    wrong_lines.loc[wrong_lines["user_id"] == "u2", "total_minor"] += 1
    with pytest.raises(statements.StatementMismatch, match="1 statement sums differ"):
        statements.build_statements(
            statements.StatementInputs(**{**good.__dict__, "user_lines": wrong_lines}), SETTINGS
        )
    missing_call = good.calls[good.calls["user_id"] != "u3"]
    with pytest.raises(statements.StatementMismatch):
        statements.check_statement_totals(missing_call, good.user_lines, SETTINGS.customers)


def test_mails_are_pending_for_the_customers_that_deliver_with_an_address():
    frames = statements.build_statements(inputs("r1"), SETTINGS)
    methods = frames.deliveries.merge(frames.statements[["statement_id", "user_id"]])
    assert dict(zip(methods["user_id"], methods["method"], strict=True)) == {
        "u1": "pdf",
        "u2": "pdf",
        "u3": "link",
    }
    assert set(frames.deliveries["status"]) == {"pending"}
    assert statements.statement_id("r1", "C1", "u1", "EUR") != statements.statement_id(
        "r2", "C1", "u1", "EUR"
    )


def test_prepaid_opening_and_closing_balance_by_posting_time(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    upgrade(engine)
    at = datetime(2026, 5, 1, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(
            insert(prepaid_account).values(
                account_id="u1",
                currency="EUR",
                low_balance_minor=500,
                topup_minor=4000,
                lock_level_minor=0,
                unlock_level_minor=200,
                max_concurrent_calls=1,
                active=True,
                balance_minor=0,
                locked=False,
                updated_at=at,
            )
        )
        entries = [
            ("topup", 5000, datetime(2026, 4, 20, tzinfo=UTC)),  # before: opening
            ("debit", -300, datetime(2026, 4, 30, 21, 59, tzinfo=UTC)),  # before 00:00 CEST
            ("debit", -120, datetime(2026, 5, 2, tzinfo=UTC)),
            ("reversal", 120, datetime(2026, 5, 3, tzinfo=UTC)),
            ("debit", -130, datetime(2026, 5, 3, tzinfo=UTC)),
            ("topup", 4000, datetime(2026, 5, 20, tzinfo=UTC)),
            ("adjustment", -50, datetime(2026, 5, 21, tzinfo=UTC)),
            ("refund", 25, datetime(2026, 5, 22, tzinfo=UTC)),
            ("debit", -999, datetime(2026, 5, 31, 22, 0, tzinfo=UTC)),  # June in Stockholm
        ]
        conn.execute(
            insert(balance_entry),
            [
                {
                    "account_id": "u1",
                    "kind": kind,
                    "amount_minor": amount,
                    "currency": "EUR",
                    "idempotency_key": f"k{n}",
                    "created_by": "test",
                    "created_at": when,
                }
                for n, (kind, amount, when) in enumerate(entries)
            ],
        )
        month = pd.Timestamp("2026-05-01", tz="Europe/Stockholm").to_pydatetime()
        june = pd.Timestamp("2026-06-01", tz="Europe/Stockholm").to_pydatetime()
        periods = statements.prepaid_periods(conn, ["u1", "u2"], month, june)
    assert set(periods) == {"u1"}  # u2 is not prepaid
    assert periods["u1"] == statements.PrepaidPeriod("EUR", 4700, -130, 4000, -25, 8545)
