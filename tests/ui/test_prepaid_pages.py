"""The Prepaid pages of the billing app, in process: Airflow's own auth manager and JWT (the
session's migrated Airflow home), a real PostgreSQL billing database set up with the prepaid
package's own functions (accounts, postings, lock rules, exposure)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, insert, select, update
from sqlalchemy.engine import Engine

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid.accounts import AccountSettings, add
from cdr_billing.prepaid.balances import lock_accounts, post
from cdr_billing.prepaid.exposure import AccountExposure, write_exposure
from cdr_billing.prepaid.locks import apply_lock_rules
from cdr_billing.schema import balance_entry, lock_event, switch_outbox, topup_request
from cdr_billing.ui import app as billing_app
from cdr_billing.ui import web
from cdr_devkit.services import connection_env

PHONE = "+46701234567"  # an account id as a switch knows it
PHONE_PATH = "/prepaid/account/%2B46701234567"
SEK = "acct/sek 7"  # reserved characters in an id
SEK_PATH = "/prepaid/account/acct%2Fsek%207"
NOW = datetime.now(UTC)
DEBITS = 55  # more than one ledger page (50)


@dataclass(frozen=True)
class Setup:
    engine: Engine
    client: TestClient


def _settings(currency: str, **overrides: object) -> AccountSettings:
    levels = {"low_balance_minor": 500, "topup_minor": 2000, "lock_level_minor": 0}
    return AccountSettings(
        currency=currency,
        unlock_level_minor=200,
        payment_method_ref="pm-1",
        **{**levels, **overrides},
    )


def _debit(conn, account: dict, n: int, cents: int) -> None:
    post(
        conn,
        account,
        "debit",
        -cents,
        f"debit:call-{n}",
        call_key=f"carrier|call-{n}",
        source_file="carrier_cdr_20261103_0730.csv",
        source_row=n + 1,
        run_id="prepaid_run_1",
        call_start=NOW - timedelta(hours=1),
        billed_seconds=60,
    )


def _seed(engine: Engine) -> None:
    with engine.begin() as conn:
        add(conn, PHONE, _settings("EUR"), "setup")
        add(conn, SEK, _settings("SEK", low_balance_minor=1000), "setup")
        accounts = lock_accounts(conn, [PHONE, SEK])
        post(conn, accounts[PHONE], "topup", 300, "seed:topup-1", "setup", reason="opening")
        for n in range(DEBITS):
            _debit(conn, accounts[PHONE], n, 8)  # 3.00 - 55 x 0.08 = -1.40
        post(conn, accounts[SEK], "topup", 5000, "seed:topup-sek", "pipeline")
        apply_lock_rules(conn, [PHONE, SEK], "prepaid run prepaid_run_1")
    with engine.begin() as conn:
        # the switch refused the LOCK twice
        conn.execute(
            update(switch_outbox)
            .where(switch_outbox.c.account_id == PHONE)
            .values(
                attempts=2,
                last_error="HTTP 503 from the switch <busy>",
                next_attempt_at=NOW + timedelta(minutes=4),
            )
        )
        for account, status, currency, resolved in (
            (PHONE, "pending", "EUR", None),
            (SEK, "declined", "SEK", NOW - timedelta(minutes=20)),
        ):
            conn.execute(
                insert(topup_request).values(
                    account_id=account,
                    idempotency_key=f"topup-{status}",
                    amount_minor=2000,
                    currency=currency,
                    payment_method_ref="pm-1",
                    status=status,
                    attempts=1,
                    requested_by="pipeline",
                    requested_at=NOW - timedelta(minutes=30),
                    resolved_at=resolved,
                    detail="card declined" if status == "declined" else None,
                )
            )
    write_exposure(
        engine,
        "prepaid_run_1",
        [
            AccountExposure(PHONE, "EUR", 2, 3600, 600_000, 4800, 400),  # 52.00 > 50.00 EUR
            AccountExposure(SEK, "SEK", 1, 3600, 600_000, 2400, 0),
        ],
        NOW - timedelta(minutes=5),
    )
    write_exposure(  # an older run: not the latest
        engine,
        "prepaid_run_0",
        [AccountExposure(PHONE, "EUR", 1, 60, 1, 99_999, 0)],
        NOW - timedelta(hours=1),
    )


@pytest.fixture(scope="module")
def setup(airflow_home, postgres) -> Setup:
    database = postgres.create_database("prepaid_pages")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in connection_env({"billing_db": postgres.connection(database)}).items():
            patch.setenv(key, value)
        engine = create_engine(postgres.url_of(database))
        upgrade(engine)
        _seed(engine)
        web.clear_engines()
        yield Setup(engine, TestClient(billing_app.app))
        web.clear_engines()
        engine.dispose()


def _token(role: str = "admin", name: str = "desk-op") -> str:
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return init_auth_manager().generate_jwt(SimpleAuthManagerUser(username=name, role=role))


def _headers(role: str = "admin", name: str = "desk-op") -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(role, name)}"}


def _opens_to(setup, path: str, account_id: str) -> bool:
    """Whether the address opens the account's page (the page names the account)."""
    return f"<h1>Prepaid account {account_id}</h1>" in _page(setup, path)


class Rows(HTMLParser):
    """Each table row's cell texts, and every link's href."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.hrefs: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def starting(self, first: str, cells: int | None = None) -> list[str]:
        """The one row whose first cell is `first` (of `cells` cells, if given)."""
        found = [
            row
            for row in self.rows
            if row and row[0] == first and (cells is None or len(row) == cells)
        ]
        assert len(found) == 1, (first, self.rows)
        return found[0]


def _page(setup: Setup, path: str, role: str = "admin") -> str:
    answer = setup.client.get(path, headers=_headers(role))
    assert answer.status_code == 200, (path, answer.status_code, answer.text[:500])
    assert answer.headers["content-type"].startswith("text/html")
    return answer.text


def _form(page: str) -> dict[str, str]:
    return {
        name: unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page)
    }


def _entries(engine: Engine, account: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(balance_entry.c.account_id == account)
        ).scalar_one()


def test_the_accounts_list_shows_balance_line_last_entries_topups_and_exposure(setup):
    page = _page(setup, "/prepaid")
    rows = Rows(page)
    account, balance, line, last_debit, last_topup, topups, at_risk = rows.starting(PHONE, 7)
    assert balance == "-1.40 EUR"
    assert line.startswith("locked | since ") and line.endswith((" CET", " CEST"))
    assert last_debit.startswith("-0.08 EUR | ")
    assert last_topup.startswith("3.00 EUR | ")
    assert topups.startswith("pending 20.00 EUR")
    assert at_risk == "52.00 EUR"  # the latest run's, not the older run's
    sek = rows.starting(SEK, 7)
    assert rows.starting(PHONE, 4)[1:] == ["48.00 EUR", "4.00 EUR", "52.00 EUR"]  # above
    assert sek[1:3] == ["50.00 SEK", "unlocked"]
    assert sek[3] == "none" and sek[4].startswith("50.00 SEK")
    assert sek[5].startswith("declined 20.00 SEK")
    assert rows.starting("EUR")[1:] == [
        "1",
        "48.00 EUR",
        "4.00 EUR",
        "52.00 EUR",
        "50.00 EUR",
        "1",
    ]
    assert rows.starting("SEK")[5:] == ["500.00 SEK", "0"]
    assert '<span class="above">52.00 EUR</span>' in page  # highlighted
    assert "prepaid/account/acct%2Fsek%207" in rows.hrefs
    sealed = [href for href in rows.hrefs if href.startswith("prepaid/account/!")]
    assert any(_opens_to(setup, "/" + href, PHONE) for href in sealed)  # sealed in the address
    assert not [href for href in rows.hrefs if "+" in href or " " in href or "4670" in href]
    assert "2 accounts, 1 lines locked" in page


def test_the_months_page_links_to_the_prepaid_page(setup):
    assert 'href="prepaid"' in _page(setup, "/")


def test_locked_only_and_paging_from_an_account(setup):
    locked = Rows(_page(setup, "/prepaid?locked=1"))
    assert [row[0] for row in locked.rows if len(row) == 7 and row[0] in (PHONE, SEK)] == [PHONE]
    later = Rows(_page(setup, "/prepaid?start=acct"))
    assert [row[0] for row in later.rows if len(row) == 7 and row[0] in (PHONE, SEK)] == [SEK]


def test_the_account_page_shows_settings_ledger_locks_topups_and_deliveries(setup):
    page = _page(setup, PHONE_PATH)
    rows = Rows(page)
    assert f"<h1>Prepaid account {PHONE}</h1>" in page
    assert rows.starting("Lock at or below")[1] == "0.00 EUR"
    assert rows.starting("Payment method")[1] == "pm-1"
    changes = [row for row in rows.rows if len(row) == 3 and row[1] == "setup"]
    assert len(changes) == 1 and "topup_minor=20.00 EUR" in changes[0][2]
    ledger = [row for row in rows.rows if len(row) == 8 and row[2] in ("debit", "topup")]
    assert len(ledger) == 50  # one page, newest first
    newest = ledger[0]
    assert newest[2:5] == ["debit", "-0.08 EUR", "-1.40 EUR"]
    assert "carrier|call-54" in newest[5] and "carrier_cdr_20261103_0730.csv row 55" in newest[5]
    assert ledger[1][4] == "-1.32 EUR"  # the balance after each entry, walking back
    older = re.search(r'href="(![\w=-]+\?before=\d+)"', page).group(1)
    rest = Rows(_page(setup, f"/prepaid/account/{older}"))
    tail = [row for row in rest.rows if len(row) == 8 and row[2] in ("debit", "topup")]
    assert [row[2] for row in tail] == ["debit"] * 5 + ["topup"]
    assert tail[-1][3:5] == ["3.00 EUR", "3.00 EUR"] and tail[-1][6:] == ["opening", "setup"]
    lock = [row for row in rows.rows if len(row) == 7 and row[3] in ("LOCK", "UNLOCK")]
    assert [(row[2], row[3], row[4]) for row in lock] == [("locked", "LOCK", "-1.40 EUR")]
    assert "at or below the lock level" in lock[0][5]
    topup = [row for row in rows.rows if len(row) == 8 and row[3] == "pending"]
    assert topup[0][2] == "20.00 EUR"
    [delivery] = [row for row in rows.rows if len(row) == 8 and row[1] == "LOCK"]
    assert delivery[2] == "failing" and delivery[5] == "2"
    assert delivery[7] == "HTTP 503 from the switch <busy>"  # escaped in the page
    assert "&lt;busy&gt;" in page
    assert re.search(r'action="![\w=-]+/credit"', page)


def test_the_outbox_page_lists_pending_and_failing_deliveries(setup):
    page = _page(setup, "/prepaid/outbox")
    rows = Rows(page)
    failing = [row for row in rows.rows if len(row) == 9 and row[1] == PHONE]
    assert len(failing) == 1
    assert failing[0][3:5] == ["LOCK", "failing"]
    [phone] = [href for href in rows.hrefs if href.startswith("account/!")]
    assert _opens_to(setup, "/prepaid/" + phone, PHONE)


def test_a_manual_topup_posts_once_per_form_and_unlocks_the_line(setup):
    form = _form(_page(setup, PHONE_PATH))
    before = _entries(setup.engine, PHONE)
    fields = {**form, "kind": "topup", "amount": "20.00", "reason": "paid cash at the desk"}

    first = setup.client.post(
        f"{PHONE_PATH}/credit", data=fields, headers=_headers(), follow_redirects=False
    )
    again = setup.client.post(
        f"{PHONE_PATH}/credit", data=fields, headers=_headers(), follow_redirects=False
    )

    assert first.status_code == 303 and again.status_code == 303
    sealed, entry_id = re.fullmatch(
        r"\.\./(![\w=-]+)\?entry=(\d+)", first.headers["location"]
    ).groups()
    assert _opens_to(setup, f"/prepaid/account/{sealed}", PHONE)
    assert re.fullmatch(rf"\.\./![\w=-]+\?entry={entry_id}&repeat=1", again.headers["location"])
    assert _entries(setup.engine, PHONE) == before + 1
    with setup.engine.connect() as conn:
        entry = conn.execute(
            select(balance_entry).where(balance_entry.c.entry_id == int(entry_id))
        ).one()
        events = conn.execute(
            select(lock_event.c.state, lock_event.c.created_by)
            .where(lock_event.c.account_id == PHONE)
            .order_by(lock_event.c.event_id)
        ).all()
    assert (entry.kind, entry.amount_minor, entry.created_by, entry.reason) == (
        "topup",
        2000,
        "desk-op",
        "paid cash at the desk",
    )
    assert events == [("locked", "pipeline"), ("unlocked", "desk-op")]
    shown = _page(setup, f"{PHONE_PATH}?entry={entry_id}")
    assert "Recorded topup 20.00 EUR" in shown and "18.60 EUR" in shown
    repeated = _page(setup, f"{PHONE_PATH}?entry={entry_id}&repeat=1")
    assert "already submitted" in repeated


def test_a_post_without_a_valid_csrf_token_is_refused(setup):
    form = _form(_page(setup, SEK_PATH))
    other = _form(_page(setup, PHONE_PATH))  # a token made for another account
    fields = {"kind": "credit", "amount": "1.00", "reason": "goodwill", "key": form["key"]}
    before = _entries(setup.engine, SEK)
    genuine = form["csrf_token"]
    altered = genuine[:-1] + ("1" if genuine.endswith("0") else "0")  # one digit of the HMAC
    for token in (None, "", other["csrf_token"], altered):
        sent = {**fields, **({"csrf_token": token} if token is not None else {})}
        answer = setup.client.post(
            f"{SEK_PATH}/credit", data=sent, headers=_headers(), follow_redirects=False
        )
        assert answer.status_code == 403, token
        assert "security token" in answer.text and 'href="../acct%2Fsek%207"' in answer.text
    as_someone_else = setup.client.post(
        f"{SEK_PATH}/credit",
        data={**fields, "csrf_token": form["csrf_token"]},
        headers=_headers(name="other-op"),
        follow_redirects=False,
    )
    assert as_someone_else.status_code == 403
    assert _entries(setup.engine, SEK) == before


@pytest.mark.parametrize(
    ("amount", "reason", "shown"),
    [
        ("12.345", "typo", "more decimals than SEK"),
        ("-5.00", "typo", "must be more than 0"),
        ("lots", "typo", "not a decimal amount"),
        ("5.00", "   ", "reason: must not be empty"),
        ("9" * 200, "typo", "not sent as the page made it"),
    ],
)
def test_a_bad_amount_or_reason_gives_a_friendly_page(setup, amount, reason, shown):
    form = _form(_page(setup, SEK_PATH))
    before = _entries(setup.engine, SEK)
    answer = setup.client.post(
        f"{SEK_PATH}/credit",
        data={**form, "kind": "credit", "amount": amount, "reason": reason},
        headers=_headers(),
        follow_redirects=False,
    )
    assert answer.status_code == 400
    assert answer.headers["content-type"].startswith("text/html")
    assert shown in answer.text and 'href="../acct%2Fsek%207"' in answer.text
    assert "9" * 40 not in answer.text  # unbounded input is never echoed
    assert _entries(setup.engine, SEK) == before


def test_an_unknown_account_is_not_found(setup):
    missing = setup.client.get("/prepaid/account/%2B4699", headers=_headers())
    assert missing.status_code == 404 and "No prepaid account" in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    form = _form(_page(setup, SEK_PATH))
    posted = setup.client.post(
        "/prepaid/account/%2B4699/credit",
        data={**form, "kind": "credit", "amount": "1.00", "reason": "x"},
        headers=_headers(),
        follow_redirects=False,
    )
    assert posted.status_code in (403, 404)  # the token is for another account
    long_id = setup.client.get("/prepaid/account/" + "7" * 500, headers=_headers())
    assert long_id.status_code == 404 and "7" * 100 not in long_id.text


def test_a_viewer_sees_the_pages_but_may_not_post(setup):
    page = _page(setup, SEK_PATH, role="viewer")
    assert 'method="post"' not in page and "may not post" in page
    form = _form(_page(setup, SEK_PATH))
    answer = setup.client.post(
        f"{SEK_PATH}/credit",
        data={**form, "kind": "credit", "amount": "1.00", "reason": "x"},
        headers=_headers(role="viewer"),
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert setup.client.get("/prepaid").status_code == 401


def test_a_malformed_parameter_gives_a_page_not_json(setup):
    answer = setup.client.get("/month/2025-13", headers=_headers())
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("text/html")
