"""The Billing pages' look in a real browser: headless Chromium (driven over the DevTools
protocol as `make screenshot` does) opens Billing in the Airflow UI of a running api-server and
clicks to the months list, a month, the Prepaid accounts and an account (its form too). Each
page is checked on a 390 px wide phone and a 1400 px wide screen, in light and dark colours: no
page-wide horizontal scroll (wide tables scroll inside their card), readable contrast, legible
chart labels, times in the billing timezone, counts with separators. Screenshots: the test's
tmp dir.

Besides the months every Billing page test shares (`seeded`), a month of this module's own
(2026-08: a million rows, twelve customers, amounts in the millions) and a prepaid account
(`look-prepaid-1`) are loaded into the running Airflow's billing database (`billing_ui`)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from billing_seed import LINE_COLUMNS, batch_of, exception_row
from browser_steps import DESKTOP, PHONE, click, frame, in_frame, open_ui, shot, show, wait
from sqlalchemy import create_engine, select

from cdr_billing.load import load_month
from cdr_billing.migrations import upgrade
from cdr_billing.prepaid.accounts import AccountSettings, add
from cdr_billing.prepaid.balances import lock_accounts, post
from cdr_billing.prepaid.locks import apply_lock_rules
from cdr_billing.schema import prepaid_account
from cdr_billing.ui.pages import reason_label
from cdr_devkit.screenshot import DevTools

MONTH = "2026-08"
ACCOUNT = "look-prepaid-1"
CUSTOMERS = [f"CUST-NORDIC-{n:02}" for n in range(1, 13)]
LINES = pd.DataFrame(
    [
        (customer, str(100 + n), "EUR", 123_456_789 // (n + 1), 40_000 + n, 3_600_000)
        for n, customer in enumerate(CUSTOMERS)
    ],
    columns=LINE_COLUMNS,
)
COUNTS = {
    "read": 1_234_567,
    "billed": 1_200_000,
    "quarantined": 1_000,
    "duplicates": 2_345,
    "not_billable": 10_000,
    "unbillable": 3_222,
    "suspense": 18_000,
    "combined": 0,
    "prepaid": 0,
}
EXCEPTIONS = pd.DataFrame(
    [
        exception_row("suspense", "NOT_ENTITLED", row, {"user_id": "acct-look-1"})
        for row in range(1, 4)
    ]
    + [exception_row("unbillable", "NO_RATE_AT_CALL_TIME", 9, {"number_range": "+4191"})]
)


VIEWS = (PHONE, DESKTOP)
SCHEMES = ("light", "dark")
MONTH_LINK = f"!!d.querySelector('a[href=\"month/{MONTH}\"]')"

# The checks, as JavaScript on the frame's document `d` (its window: w).
CHECKS = """
const w = d.defaultView, root = d.documentElement;
const rgb = c => (c.match(/[\\d.]+/g) || []).map(Number);
const lum = c => { const [r, g, b] = rgb(c).map(v => v / 255).map(
  v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
  return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
const opaque = c => { const v = rgb(c); return v.length === 3 || v[3] > 0; };
const backdrop = el => { for (let e = el; e; e = e.parentElement) {
  const c = w.getComputedStyle(e).backgroundColor; if (opaque(c)) return c; }
  return w.getComputedStyle(root).backgroundColor; };
const contrast = el => { const a = lum(w.getComputedStyle(el).color), b = lum(backdrop(el));
  return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05); };
const texts = [...d.querySelectorAll(
  'h1, h2, p, a, th, td, .badge, .ok, .bad, .empty, .meta, .code, footer, button, input')]
  .filter(el => el.getClientRects().length && el.textContent.trim() !== '');
const worst = texts.map(el => [contrast(el), el.tagName + '.' + el.className + ': '
  + el.textContent.trim().slice(0, 30)]).sort((a, b) => a[0] - b[0])[0];
const tables = [...d.querySelectorAll('table')].map(t => {
  const box = t.parentElement.closest('section, .scroll');
  return {inCard: !!box, overflowX: box ? w.getComputedStyle(box).overflowX : '',
          wider: box ? t.scrollWidth > box.clientWidth : false,
          boxRight: box ? box.getBoundingClientRect().right : 1e9}; });
const labels = [...d.querySelectorAll('svg.chart')].flatMap(svg => {
  const frame = svg.getBoundingClientRect(), all = [...svg.querySelectorAll('text')];
  return all.map((t, i) => { const r = t.getBoundingClientRect();
    const next = i % 2 === 0 ? all[i + 1].getBoundingClientRect() : null;
    return {size: parseFloat(w.getComputedStyle(t).fontSize),
            inside: r.left >= frame.left - 0.5 && r.right <= frame.right + 0.5,
            apart: next ? r.right < next.left : true}; }); });
return {
  title: d.title, scrollWidth: root.scrollWidth, clientWidth: root.clientWidth,
  background: lum(w.getComputedStyle(d.body).backgroundColor),
  text: lum(w.getComputedStyle(d.body).color), worst: worst, tables: tables, labels: labels,
  bodyText: d.body.innerText,
  numbers: [...d.querySelectorAll('td.num')].filter(c => c.cellIndex > 0)
    .map(c => c.innerText.trim()),
};
"""


@pytest.fixture(scope="module")
def look_data(running_airflow, postgres, seeded) -> None:
    """The big month and a locked prepaid account with a debit and a top-up (their times)."""
    engine = create_engine(postgres.url_of("billing_ui"))
    upgrade(engine)
    load_month(engine, MONTH, f"look_{MONTH}", batch_of(LINES, EXCEPTIONS), COUNTS)
    with engine.begin() as conn:
        exists = conn.execute(
            select(prepaid_account.c.account_id).where(prepaid_account.c.account_id == ACCOUNT)
        ).first()
        if exists is None:
            add(conn, ACCOUNT, AccountSettings("EUR", 500, 2000, 0, 200, "pm-look"), "look")
            account = lock_accounts(conn, [ACCOUNT])[ACCOUNT]
            post(conn, account, "topup", 123_456, "look:topup-1", "look", reason="opening")
            account = lock_accounts(conn, [ACCOUNT])[ACCOUNT]
            post(conn, account, "debit", -124_000, "look:debit-1", call_key="carrier|look-1")
            apply_lock_rules(conn, [ACCOUNT], "prepaid run look_1")
    engine.dispose()


def _look(devtools: DevTools, session: str, page: str, tmp_path: Path) -> dict[str, dict]:
    """Every view and colour scheme of the page open in the frame: its checks' results, and a
    screenshot each."""
    seen = {}
    for view in VIEWS:
        for scheme in SCHEMES:
            show(devtools, session, view, scheme)
            time.sleep(0.2)  # the frame's layout follows the new viewport
            key = f"{page}-{view.name}-{scheme}"
            seen[key] = in_frame(devtools, session, f"(() => {{ {CHECKS} }})()")
            shot(devtools, session, tmp_path / f"{key}.png")
    return seen


def _assert_look(key: str, found: dict[str, Any]) -> None:
    assert found["scrollWidth"] <= found["clientWidth"], (key, "the page scrolls sideways")
    tables = found["tables"]
    assert all(t["inCard"] for t in tables), key
    assert all(t["boxRight"] <= found["clientWidth"] + 1 for t in tables), (key, tables)
    assert all(t["overflowX"] in ("auto", "scroll") for t in tables if t["wider"]), (key, tables)
    contrast, element = found["worst"]
    assert contrast >= 4.5, (key, element, contrast)
    dark = key.endswith("-dark")
    assert (found["background"] < 0.05) if dark else (found["background"] > 0.9), key
    assert (found["text"] > 0.6) if dark else (found["text"] < 0.05), key
    assert all(label["size"] >= 12 and label["inside"] for label in found["labels"]), key
    assert all(label["apart"] for label in found["labels"]), (key, "chart labels overlap")
    text = found["bodyText"]
    assert "UTC" not in text, key
    zones = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)?( ?[\w+-]*)", text)
    assert zones and set(zones) <= {" CET", " CEST"}, (key, zones)
    assert not [n for n in found["numbers"] if any(len(p) > 3 for p in _digit_runs(n))], key


def _digit_runs(text: str) -> list[str]:
    """The runs of digits left of a decimal point ("1,234.50" -> ["1", "234"])."""
    whole = text.split(".")[0]
    return "".join(c if c.isdigit() else " " for c in whole).split()


def test_the_billing_pages_read_well_on_a_phone_and_a_screen_in_light_and_dark(
    running_airflow, look_data, browser, tmp_path
):
    session = open_ui(browser, running_airflow, scheme="light")
    wait(browser, session, frame(MONTH_LINK), "the months")
    months = _look(browser, session, "months", tmp_path)
    click(browser, session, f'a[href="month/{MONTH}"]', opens=f"Billing {MONTH}")
    month = _look(browser, session, "month", tmp_path)
    click(browser, session, 'nav a[href="../prepaid"]', opens="Prepaid accounts")
    # the session's other tests add accounts: the list goes on from ours, as a user asks it to
    in_frame(
        browser, session, f"d.querySelector('form.filter input[name=start]').value = '{ACCOUNT}'"
    )
    click(browser, session, "form.filter button", opens="Prepaid accounts")
    prepaid = _look(browser, session, "prepaid", tmp_path)
    click(
        browser,
        session,
        f'a[href="prepaid/account/{ACCOUNT}"]',
        opens=f"Prepaid account {ACCOUNT}",
    )
    account = _look(browser, session, "account", tmp_path)

    for key, found in {**months, **month, **prepaid, **account}.items():
        _assert_look(key, found)
    phone = months["months-phone-light"]
    assert any(t["wider"] for t in phone["tables"])  # the months table scrolls in its card
    assert phone["clientWidth"] <= 390
    assert "1,234,567" in phone["numbers"]  # rows read
    assert "1,234,567.89 EUR" in month["month-phone-light"]["bodyText"]
    shown = month["month-phone-dark"]
    assert len(shown["labels"]) == 2 * len(CUSTOMERS) and shown["labels"][0]["size"] >= 13
    assert reason_label("NOT_ENTITLED") in shown["bodyText"]
    assert reason_label("not_billable") in shown["bodyText"]
    assert "NOT_ENTITLED" not in shown["bodyText"]
    assert "Times in Europe/" in shown["bodyText"]
    times = [
        t for t in prepaid["prepaid-desktop-light"]["bodyText"].split() if t in ("CET", "CEST")
    ]
    assert len(times) >= 2  # the line's lock and the last debit and top-up
    ledger = account["account-phone-dark"]["numbers"]
    assert "1,234.56 EUR" in ledger and "-1,240.00 EUR" in ledger  # the top-up and the debit
    assert len(list(tmp_path.glob("*.png"))) == 16


def _background(devtools: DevTools, session: str) -> float:
    return in_frame(devtools, session, f"(() => {{ {CHECKS} }})()")["background"]


def test_the_billing_pages_follow_the_airflow_ui_s_own_theme(
    running_airflow, look_data, browser, tmp_path
):
    """The UI's theme chosen in its own menu (stored by next-themes under `theme`, shown as the
    class of the UI's root element) wins over the browser's preference, also when it changes
    while the page is open."""
    session = open_ui(browser, running_airflow, scheme="light")
    wait(browser, session, frame(MONTH_LINK), "the months")
    browser.evaluate(session, "localStorage.setItem('theme', 'dark')")  # browser prefers light
    browser.call("Page.reload", session)
    wait(
        browser, session, frame("d.documentElement.dataset.theme === 'dark'"), "the UI's dark theme"
    )
    wait(browser, session, frame("!!d.querySelector('table')"), "the months")
    assert _background(browser, session) < 0.05
    shot(browser, session, tmp_path / "months-ui-dark.png")

    show(browser, session, DESKTOP, "dark")  # the browser prefers dark, the UI turns light
    browser.evaluate(
        session,
        "localStorage.setItem('theme', 'light');"
        "document.documentElement.classList.replace('dark', 'light')",
    )
    wait(
        browser,
        session,
        frame("d.documentElement.dataset.theme === 'light'"),
        "the UI's light theme",
    )
    assert _background(browser, session) > 0.9
