"""The Prepaid page as an operator uses it: headless Chromium (Debian's chromium, driven over the
DevTools protocol as `make screenshot` does) opens Billing in the Airflow UI of a running
api-server, goes to Prepaid accounts, clicks into a locked account and records a top-up with
the form; the account's page then shows the new balance and the UNLOCK in its lock history.
The account lives in the running Airflow's billing database (`billing_ui`) under an id of its
own, beside the months the Billing page tests seed there."""

from __future__ import annotations

import base64
import json
import os
import signal
import time

import pytest
from sqlalchemy import create_engine, func, select
from websockets.sync.client import connect

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid.accounts import AccountSettings, add
from cdr_billing.prepaid.balances import lock_accounts, post
from cdr_billing.prepaid.locks import apply_lock_rules
from cdr_billing.schema import balance_entry, prepaid_account
from cdr_devkit.screenshot import FRAME, DevTools, start_chromium

ACCOUNT = "+46709990001"
WAIT_SECONDS = 90


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


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium and a DevTools client on it."""
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    chromium = start_chromium(profile)
    try:
        with connect(chromium.devtools_url, max_size=None, proxy=None) as socket:
            yield DevTools(socket)
    finally:
        os.killpg(chromium.process.pid, signal.SIGTERM)
        chromium.process.wait(timeout=20)


def _open_ui(devtools: DevTools, airflow) -> str:
    """Log in with the UI's cookie and open Billing in the Airflow UI; return the session."""
    devtools.call(
        "Storage.setCookies",
        cookies=[{"name": "_token", "value": airflow.token(), "url": f"{airflow.base_url}/"}],
    )
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=1400,
        height=1000,
        deviceScaleFactor=1,
        mobile=False,
    )
    devtools.call("Page.navigate", session, url=f"{airflow.base_url}/plugin/billing")
    return session


def _frame(expression: str) -> str:
    """A JavaScript expression on the Billing app's document inside the UI's frame."""
    return f"(() => {{ const d = {FRAME}; return d ? ({expression}) : null; }})()"


def _wait(devtools: DevTools, session: str, expression: str, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not devtools.evaluate(session, _frame(expression)):
        if time.monotonic() > deadline:
            shown = devtools.evaluate(session, _frame("d.title + ': ' + d.body.innerText"))
            raise AssertionError(f"{what} did not appear; the frame shows {shown!r}")
        time.sleep(0.3)


def _lock_history(devtools: DevTools, session: str) -> list[list[str]]:
    """The cells of the lock history's rows, newest first."""
    script = (
        "[...d.querySelectorAll('section')].filter(s => s.querySelector('h2')?.textContent"
        ".startsWith('Lock history')).flatMap(s => [...s.querySelectorAll('tbody tr')])"
        ".map(r => [...r.cells].map(c => c.innerText.trim()))"
    )
    return devtools.evaluate(session, _frame(script))


def test_a_desk_topup_from_the_prepaid_page_unlocks_the_line(
    running_airflow, postgres, locked_account, browser, tmp_path
):
    session = _open_ui(browser, running_airflow)
    prepaid_link = "d.querySelector('nav a[href=\"prepaid\"]')"
    _wait(browser, session, f"!!{prepaid_link}", "the Billing page's navigation")
    browser.evaluate(session, _frame(f"{prepaid_link}.click()"))
    account_link = "d.querySelector('a[href=\"prepaid/account/%2B46709990001\"]')"
    _wait(browser, session, f"!!{account_link}", "the account on the Prepaid page")
    browser.evaluate(session, _frame(f"{account_link}.click()"))
    _wait(browser, session, "!!d.querySelector('form.credit')", "the account's top-up form")
    assert browser.evaluate(session, _frame("d.querySelector('b.balance').innerText")) == (
        "-2.50 EUR"
    )
    assert [row[3] for row in _lock_history(browser, session)] == ["LOCK"]

    fill = (
        "d.querySelector('select[name=kind]').value = 'topup', "
        "d.querySelector('input[name=amount]').value = '20.00', "
        f"d.querySelector('input[name=reason]').value = {json.dumps('cash at the desk')}, "
        "d.querySelector('form.credit button').click(), true"
    )
    browser.evaluate(session, _frame(fill))
    _wait(browser, session, "!!d.querySelector('p.notice')", "the recorded top-up's notice")

    balance = browser.evaluate(session, _frame("d.querySelector('b.balance').innerText"))
    notice = browser.evaluate(session, _frame("d.querySelector('p.notice').innerText"))
    history = _lock_history(browser, session)
    png = browser.call("Page.captureScreenshot", session, format="png")["data"]
    (tmp_path / "prepaid-account.png").write_bytes(base64.b64decode(png))

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
