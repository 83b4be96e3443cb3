"""The drill-down as finance clicks it in the Airflow UI: headless Chromium (browser_steps.py)
opens Billing, the month 2026-09, a customer from "Totals per customer", a sequence number, the
user whose id is a phone number (masked, never in full in the page) and pages through the
user's calls, each with its CDR file and row; back to the month by the crumbs, a suspense
account's rows; the card's lines download; the calls page on a 390 px phone. The month is
loaded by drill_seed.py into the running Airflow's billing database (`billing_ui`); every
figure expected here is computed from drill_seed's frames, not by the app. Screenshots: the
test's tmp dir."""

from __future__ import annotations

import csv
import time
from decimal import Decimal

import pandas as pd
import pytest
from browser_steps import (
    DESKTOP,
    PHONE,
    allow_downloads,
    click,
    downloaded,
    element,
    frame,
    in_frame,
    open_ui,
    section,
    shot,
    show,
    table_rows,
)
from drill_seed import (
    LINE_KEYS,
    MONTH,
    PHONE_MASKED,
    SUSPENSE_MASKED,
    SUSPENSE_PHONE,
    DrillMonth,
    minutes,
    money,
    seed,
)
from drill_seed import PHONE as PHONE_ID
from sqlalchemy import create_engine

from cdr_billing.migrations import upgrade
from cdr_billing.money import from_minor_units
from cdr_devkit.screenshot import DevTools

MONTH_TITLE = f"Billing {MONTH}"
CUSTOMER, SEQUENCE, CURRENCY = "C1", "1001", "EUR"
CALLS_TITLE = f"Calls of {PHONE_MASKED}, line {CUSTOMER} / {SEQUENCE}, {MONTH}"
SUSPENSE_TITLE = f"Calls in suspense: {SUSPENSE_MASKED}, {MONTH}"
CALLS_PER_PAGE = 100
# the texts of the UI's page and of the Billing page in its frame, with their titles
TEXTS = (
    "[document.title, document.body.innerText, "
    f"{frame('d.title')}, {frame('d.body.innerText')}].join('\\n')"
)


@pytest.fixture(scope="module")
def drill_month(running_airflow, postgres) -> DrillMonth:
    """The month loaded as the pipeline loads it, in the billing database the UI reads."""
    engine = create_engine(postgres.url_of("billing_ui"))
    upgrade(engine)
    month = seed(engine, run_id=f"drill_browser_{MONTH}")
    engine.dispose()
    return month


def _counted(value: str) -> int:
    return int(value.replace(",", ""))


def _assert_masked(devtools: DevTools, session: str) -> None:
    """The phone-number ids appear masked only: in neither page's text nor title, nor in the
    UI's address (which copies the frame's: their links carry them sealed)."""
    shown = devtools.evaluate(session, TEXTS)
    addresses = devtools.evaluate(session, f"location.href + ' ' + {frame('d.location.href')}")
    for full in (PHONE_ID, SUSPENSE_PHONE):
        assert full not in shown and full[1:] not in shown
        assert full[1:] not in addresses and full[-7:] not in addresses


def _listing(devtools: DevTools, session: str, heading: str, title: str) -> list[list[str]]:
    """Every row of a paged listing: its page's rows and each next page's, followed by the
    "Next page" link."""
    pages = [table_rows(devtools, session, heading)]
    more = element(section(heading), "a", "Next page")
    while devtools.evaluate(session, f"!!{more}"):
        click(devtools, session, "a", "Next page", scope=section(heading), opens=title)
        _assert_masked(devtools, session)
        pages.append(table_rows(devtools, session, heading))
    assert [len(rows) for rows in pages[:-1]] == [CALLS_PER_PAGE] * (len(pages) - 1)
    return [row for rows in pages for row in rows]


def _open_month(devtools: DevTools, airflow) -> str:
    """Billing in the UI, then the month in its list; return the session."""
    session = open_ui(devtools, airflow)
    click(devtools, session, f'a[href="month/{MONTH}"]', opens=MONTH_TITLE)
    return session


def _line_figures(calls: pd.DataFrame) -> pd.DataFrame:
    return calls.groupby(LINE_KEYS).agg(
        calls=("cost_minor", "size"),
        seconds=("billed_seconds", "sum"),
        cost=("cost_minor", "sum"),
    )


def test_from_a_customer_to_a_phone_user_s_calls_and_a_suspense_account_s_rows(
    running_airflow, drill_month, browser, tmp_path
):
    calls = drill_month.calls
    session = _open_month(browser, running_airflow)
    per_customer = calls.groupby(["customer_id", "currency"]).agg(
        lines=("sequence_number", "nunique"),
        calls=("cost_minor", "size"),
        cost=("cost_minor", "sum"),
    )
    assert sorted(table_rows(browser, session, "Totals per customer")) == sorted(
        [customer, currency, str(row.lines), f"{row.calls:,}", money(row.cost, currency)]
        for (customer, currency), row in per_customer.iterrows()
    )
    shot(browser, session, tmp_path / "month.png")

    totals = section("Totals per customer")
    click(browser, session, "a", CUSTOMER, scope=totals, opens=f"Customer {CUSTOMER}, {MONTH}")
    lines = _line_figures(calls).loc[CUSTOMER]
    assert sorted(table_rows(browser, session, "Sequence numbers")) == sorted(
        [sequence, currency, f"{n.calls:,}", minutes(n.seconds), money(n.cost, currency)]
        for (sequence, currency), n in lines.iterrows()
    )
    shot(browser, session, tmp_path / "customer.png")

    line_title = f"Line {CUSTOMER} / {SEQUENCE} ({CURRENCY}), {MONTH}"
    click(browser, session, "a", SEQUENCE, scope=section("Sequence numbers"), opens=line_title)
    in_line = calls.query(
        "customer_id == @CUSTOMER and sequence_number == @SEQUENCE and currency == @CURRENCY"
    )
    users = in_line.groupby("user_id").agg(
        calls=("cost_minor", "size"), seconds=("billed_seconds", "sum"), cost=("cost_minor", "sum")
    )
    assert sorted(table_rows(browser, session, "Users")) == sorted(
        [
            PHONE_MASKED if user == PHONE_ID else user,
            f"{u.calls:,}",
            minutes(u.seconds),
            money(u.cost, CURRENCY),
        ]
        for user, u in users.iterrows()
    )
    _assert_masked(browser, session)
    shot(browser, session, tmp_path / "line.png")

    click(browser, session, "a", PHONE_MASKED, scope=section("Users"), opens=CALLS_TITLE)
    _assert_masked(browser, session)
    shot(browser, session, tmp_path / "calls.png")
    shown = _listing(browser, session, "Calls", CALLS_TITLE)
    expected = in_line.query("user_id == @PHONE_ID").sort_values(["source_file", "source_row"])
    assert [(r[0], _counted(r[1]), _counted(r[4]), r[5], r[7]) for r in shown] == [
        (
            c.source_file,
            c.source_row,
            c.billed_seconds,
            money(c.cost_minor, CURRENCY),
            c.transaction_id,
        )
        for c in expected.itertuples()
    ]  # every call once, in file and row order, across the pages
    assert len({(r[0], r[1]) for r in shown}) == len(shown) == 250

    show(browser, session, PHONE)
    time.sleep(0.3)  # the frame's layout follows the new viewport
    width = in_frame(
        browser,
        session,
        "[d.documentElement.scrollWidth, d.documentElement.clientWidth, "
        "d.querySelector('section table').scrollWidth, "
        "d.defaultView.getComputedStyle(d.querySelector('.scroll')).overflowX]",
    )
    shot(browser, session, tmp_path / "calls-phone.png")
    assert width[0] <= width[1] <= 390, width  # no page-wide horizontal scroll
    assert width[2] > width[1] and width[3] in ("auto", "scroll"), width  # the card scrolls
    show(browser, session, DESKTOP)

    click(browser, session, "p.crumbs a", f"Month {MONTH}", opens=MONTH_TITLE)
    suspense = drill_month.not_billed["suspense"]
    groups = suspense.groupby("user_id").size()
    assert sorted(
        (row[0], _counted(row[2])) for row in table_rows(browser, session, "Suspense accounts")
    ) == sorted(
        (SUSPENSE_MASKED if key == SUSPENSE_PHONE else key or "unknown", int(n))
        for key, n in groups.items()
    )
    accounts = section("Suspense accounts")
    click(browser, session, "a", SUSPENSE_MASKED, scope=accounts, opens=SUSPENSE_TITLE)
    _assert_masked(browser, session)
    group = suspense.query("user_id == @SUSPENSE_PHONE").sort_values(["source_file", "source_row"])
    meta = in_frame(browser, session, "d.querySelector('p.meta').innerText")
    assert f"{len(group)} calls, {minutes(int(group['duration_seconds'].sum()))} minutes" in meta
    shot(browser, session, tmp_path / "suspense-account.png")
    rows = _listing(browser, session, "Calls", SUSPENSE_TITLE)
    assert [(r[0], _counted(r[1]), r[2], r[4], r[5]) for r in rows] == [
        (
            g.source_file,
            g.source_row,
            minutes(g.duration_seconds),
            SUSPENSE_MASKED,
            g.transaction_id,
        )
        for g in group.itertuples()
    ]


def test_the_month_card_downloads_the_lines_as_a_csv(
    running_airflow, drill_month, browser, tmp_path
):
    downloads = tmp_path / "downloads"
    allow_downloads(browser, downloads)
    session = _open_month(browser, running_airflow)
    click(browser, session, "a", "Download the lines (CSV)", scope=section("Lines and calls"))
    file = downloaded(downloads, ".csv")
    assert file.name == f"billing_lines_{MONTH}.csv"
    with file.open(newline="", encoding="utf-8") as opened:
        rows = [list(row.items()) for row in csv.DictReader(opened)]
    expected = [
        {
            "billing_month": MONTH,
            "customer_id": customer,
            "sequence_number": sequence,
            "currency": currency,
            "calls": str(line.calls),
            "billed_seconds": str(line.seconds),
            "minutes": minutes(line.seconds).replace(",", ""),
            "total": str(from_minor_units(line.cost, currency)),
        }
        for (customer, sequence, currency), line in _line_figures(drill_month.calls).iterrows()
    ]
    assert sorted(rows) == sorted(list(line.items()) for line in expected)  # columns in order
    eur = [dict(row) for row in rows if dict(row)["currency"] == "EUR"]
    assert sum(Decimal(row["total"]) for row in eur) == from_minor_units(
        int(drill_month.calls.query("currency == 'EUR'")["cost_minor"].sum()), "EUR"
    )
    # the download left the month's page in the frame as it was
    assert in_frame(browser, session, "d.title") == MONTH_TITLE
