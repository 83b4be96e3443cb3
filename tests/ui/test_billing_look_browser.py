"""The Billing pages' look in a real browser: headless Chromium (driven over the DevTools
protocol as `make screenshot` does) opens Billing in the Airflow UI of a running api-server and
clicks to the months list, a month, the Prepaid accounts and an account (its form too). Each
page is checked on a 390 px wide phone and a 1400 px wide screen, in light and dark colours: no
page-wide horizontal scroll (wide tables scroll inside their card), readable contrast, legible
chart labels, times in the billing timezone, counts with separators. Screenshots: the test's
tmp dir.

Besides the months every Billing page test shares (`seeded`), a month of this module's own
(2026-07: a million rows, twelve customers, amounts in the millions) and a prepaid account
(`look-prepaid-1`) are loaded into the running Airflow's billing database (`billing_ui`)."""

from __future__ import annotations

import base64
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pytest
from billing_seed import LINE_COLUMNS, batch_of, exception_row
from sqlalchemy import create_engine, select
from websockets.sync.client import connect

from cdr_billing.load import load_month
from cdr_billing.migrations import upgrade
from cdr_billing.prepaid.accounts import AccountSettings, add
from cdr_billing.prepaid.balances import lock_accounts, post
from cdr_billing.prepaid.locks import apply_lock_rules
from cdr_billing.schema import prepaid_account
from cdr_billing.ui.pages import reason_label
from cdr_devkit.screenshot import FRAME, DevTools, start_chromium

MONTH = "2026-07"
ACCOUNT = "look-prepaid-1"
WAIT_SECONDS = 60
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


class View(NamedTuple):
    """A screen the pages are checked on."""

    name: str
    width: int
    height: int
    mobile: bool


VIEWS = (View("phone", 390, 844, True), View("desktop", 1400, 1000, False))
SCHEMES = ("light", "dark")

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


@pytest.fixture
def browser(tmp_path) -> Iterator[DevTools]:
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


def _frame(expression: str) -> str:
    """A JavaScript expression on the Billing app's document inside the UI's frame."""
    return f"(() => {{ const d = {FRAME}; return d ? ({expression}) : null; }})()"


def _wait(devtools: DevTools, session: str, expression: str, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not devtools.evaluate(session, _frame(expression)):
        if time.monotonic() > deadline:
            shown = devtools.evaluate(session, _frame("d.title + ': ' + d.body.innerText"))
            raise AssertionError(f"{what} did not appear; the frame shows {shown!r}")
        time.sleep(0.2)


def _open_ui(devtools: DevTools, airflow) -> str:
    """Log in with the UI's cookie and open Billing in the Airflow UI; return the session."""
    devtools.call(
        "Storage.setCookies",
        cookies=[{"name": "_token", "value": airflow.token(), "url": f"{airflow.base_url}/"}],
    )
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    _show(devtools, session, VIEWS[1], "light")
    devtools.call("Page.navigate", session, url=f"{airflow.base_url}/plugin/billing")
    return session


def _show(devtools: DevTools, session: str, view: View, scheme: str) -> None:
    devtools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=view.width,
        height=view.height,
        deviceScaleFactor=2 if view.mobile else 1,
        mobile=view.mobile,
    )
    devtools.call(
        "Emulation.setEmulatedMedia",
        session,
        features=[{"name": "prefers-color-scheme", "value": scheme}],
    )


def _click(devtools: DevTools, session: str, selector: str, title: str) -> None:
    """Click a link of the frame's page and wait for the page it opens."""
    link = f"d.querySelector({selector!r})"
    _wait(devtools, session, f"!!{link}", f"the link {selector}")
    devtools.evaluate(session, _frame(f"{link}.click()"))
    _wait(
        devtools,
        session,
        f"d.title === {title!r} && d.readyState === 'complete'",
        f"the page {title!r}",
    )


def _look(devtools: DevTools, session: str, page: str, tmp_path: Path) -> dict[str, dict]:
    """Every view and colour scheme of the page open in the frame: its checks' results, and a
    screenshot each."""
    seen = {}
    for view in VIEWS:
        for scheme in SCHEMES:
            _show(devtools, session, view, scheme)
            time.sleep(0.2)  # the frame's layout follows the new viewport
            key = f"{page}-{view.name}-{scheme}"
            seen[key] = devtools.evaluate(session, _frame(f"(() => {{ {CHECKS} }})()"))
            png = devtools.call("Page.captureScreenshot", session, format="png")["data"]
            (tmp_path / f"{key}.png").write_bytes(base64.b64decode(png))
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
    session = _open_ui(browser, running_airflow)
    _wait(browser, session, f"!!d.querySelector('a[href=\"month/{MONTH}\"]')", "the months")
    months = _look(browser, session, "months", tmp_path)
    _click(browser, session, f'a[href="month/{MONTH}"]', f"Billing {MONTH}")
    month = _look(browser, session, "month", tmp_path)
    _click(browser, session, 'nav a[href="../prepaid"]', "Prepaid accounts")
    prepaid = _look(browser, session, "prepaid", tmp_path)
    _click(browser, session, f'a[href="prepaid/account/{ACCOUNT}"]', f"Prepaid account {ACCOUNT}")
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
    return devtools.evaluate(session, _frame(f"(() => {{ {CHECKS} }})()"))["background"]


def test_the_billing_pages_follow_the_airflow_ui_s_own_theme(
    running_airflow, look_data, browser, tmp_path
):
    """The UI's theme chosen in its own menu (stored by next-themes under `theme`, shown as the
    class of the UI's root element) wins over the browser's preference, also when it changes
    while the page is open."""
    session = _open_ui(browser, running_airflow)
    _wait(browser, session, f"!!d.querySelector('a[href=\"month/{MONTH}\"]')", "the months")
    browser.evaluate(session, "localStorage.setItem('theme', 'dark')")  # browser prefers light
    browser.call("Page.reload", session)
    _wait(browser, session, "d.documentElement.dataset.theme === 'dark'", "the UI's dark theme")
    _wait(browser, session, "!!d.querySelector('table')", "the months")
    assert _background(browser, session) < 0.05
    png = browser.call("Page.captureScreenshot", session, format="png")["data"]
    (tmp_path / "months-ui-dark.png").write_bytes(base64.b64decode(png))

    _show(browser, session, VIEWS[1], "dark")  # the browser prefers dark, the UI turns light
    browser.evaluate(
        session,
        "localStorage.setItem('theme', 'light');"
        "document.documentElement.classList.replace('dark', 'light')",
    )
    _wait(browser, session, "d.documentElement.dataset.theme === 'light'", "the UI's light theme")
    assert _background(browser, session) > 0.9
