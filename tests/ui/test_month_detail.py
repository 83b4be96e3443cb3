"""The month page's data on a month of many customers and accounts (real PostgreSQL): the
database ranks the largest customers of each currency and the largest non-billed groups, and
the totals and counts still cover every one, checked against sums taken here from the rows."""

from __future__ import annotations

import pandas as pd
import pytest
from billing_seed import LINE_COLUMNS, batch_of, exception_row
from sqlalchemy import create_engine

from cdr_billing.load import load_month
from cdr_billing.migrations import upgrade
from cdr_billing.ui import queries, web

MONTH = "2026-04"
# 25 EUR customers (C01..C25, C25 the largest) with two lines each, 3 SEK customers
LINES = pd.DataFrame(
    [(f"C{n:02}", str(s), "EUR", n * 1000 + s, n, 60) for n in range(1, 26) for s in (1, 2)]
    + [(f"S{n}", "9", "SEK", n * 7, 1, 60) for n in range(1, 4)],
    columns=LINE_COLUMNS,
)
# 30 suspense accounts, acct-0 with the most calls
EXCEPTIONS = pd.DataFrame(
    [
        exception_row("suspense", "UNKNOWN_ACCOUNT", 1000 * n + c, {"user_id": f"acct-{n}"})
        for n in range(30)
        for c in range(31 - n)
    ]
)


@pytest.fixture(scope="module")
def detail(postgres):
    engine = create_engine(postgres.url_of(postgres.create_database("month_detail")))
    upgrade(engine)
    load_month(engine, MONTH, "top_run", batch_of(LINES, EXCEPTIONS), {"read": 1})
    try:
        yield queries.month_detail(engine, web.config(), MONTH)
    finally:
        engine.dispose()


def test_the_largest_customers_of_each_currency_and_totals_of_all(detail):
    assert [(c.customer_id, c.currency) for c in detail.customers] == [
        *((f"C{n:02}", "EUR") for n in range(25, 5, -1)),
        *((f"S{n}", "SEK") for n in (3, 2, 1)),
    ]
    by_customer = LINES.groupby(["customer_id", "currency"]).agg(
        total=("total_minor", "sum"), lines=("total_minor", "size"), calls=("call_count", "sum")
    )
    for customer in detail.customers:
        row = by_customer.loc[(customer.customer_id, customer.currency)]
        assert (customer.total_minor, customer.lines, customer.calls) == (
            row.total,
            row.lines,
            row.calls,
        )
    by_currency = LINES.groupby("currency").agg(
        customers=("customer_id", "nunique"),
        lines=("total_minor", "size"),
        calls=("call_count", "sum"),
        total=("total_minor", "sum"),
    )
    assert [tuple(t) for t in detail.currency_totals] == [
        (currency, r.customers, r.lines, r.calls, r.total) for currency, r in by_currency.iterrows()
    ]


def test_the_largest_groups_and_how_many_there_are(detail):
    assert [(g.key, g.calls) for g in detail.suspense] == [(f"acct-{n}", 31 - n) for n in range(20)]
    assert detail.group_counts == {"unbillable": 0, "suspense": 30}
