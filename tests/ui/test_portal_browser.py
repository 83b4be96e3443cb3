"""The portal in headless Chromium, as a user uses it: sign in by the link the real SMTP server
received, see the balance and this month's calls, read a statement, top up (the real devkit
gateway approves one line and declines the other, whose line is then shown locked)."""

from __future__ import annotations

import json

import pytest
from portal_world import ALICE, ALICE_DECLINED, ALICE_PAYS, running_portal
from sqlalchemy import select

from cdr_billing.portal.auth import address_hash
from cdr_billing.schema import lock_event, portal_audit, prepaid_account
from cdr_devkit.portal_browser import loaded, open_page, sign_in, submit


@pytest.fixture(scope="module")
def world(postgres, tmp_path_factory):
    with running_portal(postgres, tmp_path_factory.mktemp("portal"), "portal_browser") as w:
        yield w


def _text(devtools, session: str, selector: str) -> str:
    return devtools.evaluate(
        session, f"document.querySelector({json.dumps(selector)})?.innerText ?? ''"
    )


def _line_card(devtools, session: str, account_id: str) -> str:
    return devtools.evaluate(
        session,
        "[...document.querySelectorAll('section.line')]"
        f".find(s => s.querySelector('h2').innerText.endsWith({json.dumps(account_id)}))"
        "?.innerText ?? ''",
    )


def _top_up(devtools, session: str, world, account_id: str, amount: str) -> str:
    """Pick the amount on the line's form, submit it; the top-up page's text."""
    from cdr_billing.portal.queries import account_ref

    form = f'form[action="/accounts/{account_ref(world.secret, account_id)}/topup"]'
    devtools.evaluate(
        session,
        f"[...document.querySelectorAll({json.dumps(form + ' input[name=amount]')})]"
        f".find(i => i.parentElement.innerText.trim() === {json.dumps(amount)}).checked = true",
    )
    submit(devtools, session, form, "Top-up")
    return _text(devtools, session, "section.topup")


def test_sign_in_see_balance_read_a_statement_and_top_up(world, browser):
    session = sign_in(browser, world.url, world.maildir, ALICE)
    paying = _line_card(browser, session, ALICE_PAYS)
    assert "2.97 EUR" in paying and "Open for calls" in paying  # 5.00 credited - 2.03
    calls = _text(browser, session, "section.calls")
    assert "3 calls so far, 2.03 EUR" in calls  # 0.35 + 1.20 + 0.48
    assert "calls appear in your statement once the month is billed" in _text(
        browser, session, "section.postpaid"
    ).replace("Your calls of this month appear", "calls appear")
    statements = _text(browser, session, "section.statements")
    assert "2026-05" in statements and "12.34 EUR" in statements
    assert "2026-04" not in statements  # superseded with its batch

    browser.evaluate(session, "document.leftByTest = true")
    browser.evaluate(session, "document.querySelector('section.statements a').click()")
    loaded(browser, session, f"Statement {world.statements['alice']}")
    assert "Total 12.34 EUR" in _text(browser, session, "body")

    open_page(browser, session, f"{world.url}/", "My phone account")
    approved = _top_up(browser, session, world, ALICE_PAYS, "20.00 EUR")
    assert "Approved" in approved and "20.00 EUR" in approved
    open_page(browser, session, f"{world.url}/", "My phone account")
    assert "22.97 EUR" in _line_card(browser, session, ALICE_PAYS)

    declined = _top_up(browser, session, world, ALICE_DECLINED, "10.00 EUR")
    assert "Declined" in declined and "insufficient funds" in declined
    open_page(browser, session, f"{world.url}/", "My phone account")
    locked = _line_card(browser, session, ALICE_DECLINED)
    assert "Locked: calls are refused" in locked and "0.00 EUR" in locked
    topups = _text(browser, session, "section.topups")
    assert "approved" in topups and "declined" in topups

    charges = {c.account_id: c for c in world.gateway.charges()}
    assert charges[ALICE_PAYS].charged and charges[ALICE_PAYS].amount_minor == 2000
    assert not charges[ALICE_DECLINED].charged
    with world.engine.connect() as conn:
        accounts = {row.account_id: row for row in conn.execute(select(prepaid_account)).all()}
        locks = conn.execute(
            select(lock_event.c.state, lock_event.c.created_by).where(
                lock_event.c.account_id == ALICE_DECLINED
            )
        ).all()
        audited = conn.execute(
            select(portal_audit.c.event, portal_audit.c.account_id, portal_audit.c.detail).where(
                portal_audit.c.address_hash == address_hash(ALICE),
                portal_audit.c.event.in_(("topup_requested", "topup_settled")),
            )
        ).all()
    assert accounts[ALICE_PAYS].balance_minor == 2297
    assert accounts[ALICE_DECLINED].locked and [s for s, _ in locks] == ["locked"]
    assert locks[0].created_by.startswith("portal:")
    settled = [detail for event, _, detail in audited if event == "topup_settled"]
    assert any("approved" in d for d in settled) and any("declined" in d for d in settled)
