"""The Prepaid page as an operator uses it: headless Chromium (Debian's chromium, driven over the
DevTools protocol as `make screenshot` does) opens Billing in the Airflow UI of a running
api-server, goes to Prepaid accounts, clicks into a locked account and records a top-up with
the form; the account's page then shows the new balance and the UNLOCK in its lock history.
The account lives in the running Airflow's billing database (`billing_ui`) under an id of its
own, beside the months the Billing page tests seed there."""

from __future__ import annotations

import json

import pytest
from browser_steps import click, frame, in_frame, open_ui, shot, table_rows, wait
from sqlalchemy import create_engine, func, select

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid.accounts import AccountSettings, add
from cdr_billing.prepaid.balances import lock_accounts, post
from cdr_billing.prepaid.locks import apply_lock_rules
from cdr_billing.schema import balance_entry, prepaid_account

ACCOUNT = "+46709990001"


@pytest.fixture(scope="module")
def locked_account(running_airflow, postgres) -> str:
    """A prepaid account at -2.50 EUR, its line locked by the lock rules."""
    engine = create_engine(postgres.url_of("billing_ui"))
    upgrade(engine)
    with engine.begin() as conn:
        add(
            conn,
            ACCOUNT,
            AccountSettings("EUR", 500, 2000, 0, 200, "pm-browser", 1),
            "browser-test",
        )
        account = lock_accounts(conn, [ACCOUNT])[ACCOUNT]
        post(conn, account, "debit", -250, "browser:debit-1", call_key="carrier|b-1")
        apply_lock_rules(conn, [ACCOUNT], "prepaid run browser_1")
    engine.dispose()
    return ACCOUNT


def test_a_desk_topup_from_the_prepaid_page_unlocks_the_line(
    running_airflow, postgres, locked_account, browser, tmp_path
):
    session = open_ui(browser, running_airflow)
    click(browser, session, 'nav a[href="prepaid"]', opens="Prepaid accounts")
    click(browser, session, "a", text=ACCOUNT)  # its address carries the number sealed
    wait(browser, session, frame("!!d.querySelector('form.credit')"), "the account's top-up form")
    assert ACCOUNT[1:] not in browser.evaluate(session, "location.href")  # the UI's address
    assert in_frame(browser, session, "d.querySelector('b.balance').innerText") == "-2.50 EUR"
    assert [row[3] for row in table_rows(browser, session, "Lock history")] == ["LOCK"]

    fill = (
        "d.querySelector('select[name=kind]').value = 'topup', "
        "d.querySelector('input[name=amount]').value = '20.00', "
        f"d.querySelector('input[name=reason]').value = {json.dumps('cash at the desk')}, "
        "d.querySelector('form.credit button').click(), true"
    )
    in_frame(browser, session, fill)
    wait(browser, session, frame("!!d.querySelector('p.notice')"), "the recorded top-up's notice")

    balance = in_frame(browser, session, "d.querySelector('b.balance').innerText")
    notice = in_frame(browser, session, "d.querySelector('p.notice').innerText")
    history = table_rows(browser, session, "Lock history")
    shot(browser, session, tmp_path / "prepaid-account.png")

    assert balance == "17.50 EUR"
    assert notice.startswith("Recorded topup 20.00 EUR")
    assert [row[3] for row in history] == ["UNLOCK", "LOCK"]
    assert history[0][6] == "admin"  # the logged-in Airflow user
    engine = create_engine(postgres.url_of("billing_ui"))
    with engine.connect() as conn:
        topups = conn.execute(
            select(func.count()).where(
                balance_entry.c.account_id == ACCOUNT, balance_entry.c.kind == "topup"
            )
        ).scalar_one()
        locked = conn.execute(
            select(prepaid_account.c.locked).where(prepaid_account.c.account_id == ACCOUNT)
        ).scalar_one()
    engine.dispose()
    assert (topups, locked) == (1, False)
