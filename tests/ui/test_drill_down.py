"""The Billing page's drill-down, in process against a real PostgreSQL billing database loaded
by the pipeline's own load (load_month, rows_not_billed): the numbers each page shows equal sums
taken here from the billed_call and billing_exception rows, every call is on exactly one page,
phone-number ids are masked, bad addresses are 404 pages and the CSV is a download."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from html import unescape
from html.parser import HTMLParser
from urllib.parse import quote, urljoin

import pandas as pd
import pytest
from cryptography.fernet import Fernet
from drill_seed import (
    MONTH,
    ODD_CUSTOMER,
    PHONE,
    PHONE_MASKED,
    SLASHED,
    SUSPENSE_PHONE,
    minutes,
    money,
    seed,
)
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from cdr_billing import report
from cdr_billing.migrations import upgrade
from cdr_billing.money import from_minor_units
from cdr_billing.ui import app as billing_app
from cdr_billing.ui import drill_queries, pages, web
from cdr_devkit.services import connection_env

BASE = f"http://testserver/month/{MONTH}/"


class Parsed(HTMLParser):
    """Each table body row's cell texts, every link's href and text, and the visible text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self.links: dict[str, str] = {}
        self.text: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._href: str | None = None
        self._in_body = False
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "a":
            self._href = dict(attrs)["href"]
            self.links[self._href] = ""
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "td" and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._href is not None:
            self.links[self._href] += data

    def href(self, text: str) -> str:
        """The link whose text is `text`."""
        return next(href for href, shown in self.links.items() if shown == text)

    def visible(self) -> str:
        return unescape("".join(self.text))


class Setup:
    def __init__(self, engine: Engine, client: TestClient, frames: dict[str, pd.DataFrame]):
        self.engine, self.client, self.frames = engine, client, frames

    def get(self, url: str):
        answer = self.client.get(url)
        assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
        return answer

    def page(self, url: str) -> Parsed:
        return Parsed(self.get(url).text)

    def sql(self, query: str, **params) -> list:
        with self.engine.connect() as conn:
            return conn.execute(text(query), params).all()


@pytest.fixture(scope="module")
def setup(airflow_home, postgres) -> Setup:
    database = postgres.create_database("drill_down")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in connection_env({"billing_db": postgres.connection(database)}).items():
            patch.setenv(key, value)
        engine = create_engine(postgres.url_of(database))
        upgrade(engine)
        frames = seed(engine).not_billed
        web.clear_engines()
        billing_app.app.dependency_overrides[billing_app.require_billing_reader] = lambda: None
        try:
            yield Setup(engine, TestClient(billing_app.app), frames)
        finally:
            billing_app.app.dependency_overrides.clear()
            web.clear_engines()
            engine.dispose()


def _line_sums(setup: Setup) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    """Per line, from the billed calls themselves: calls, seconds, cost."""
    rows = setup.sql(
        "SELECT customer_id, sequence_number, currency, count(*), sum(billed_seconds), "
        "sum(cost_minor) FROM billed_call GROUP BY 1, 2, 3"
    )
    return {(c, s, cur): (int(n), int(sec), int(cost)) for c, s, cur, n, sec, cost in rows}


def _walk(setup: Setup, url: str) -> list[Parsed]:
    """A paged listing: its first page and every page its "Next page" links reach."""
    found = [setup.page(url)]
    while "Next page" in found[-1].links.values():
        url = urljoin(url, found[-1].href("Next page"))
        found.append(setup.page(url))
    return found


def test_the_lines_page_shows_each_line_as_its_calls_sum(setup, monkeypatch):
    monkeypatch.setattr(drill_queries, "LINES_PER_PAGE", 2)  # 3 lines: two pages
    pages = _walk(setup, BASE + "lines")
    assert len(pages) == 2
    lines = [r for p in pages for r in p.rows if len(r) == 6]  # the totals have 5 columns
    assert len(lines) == 3
    shown = {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in lines}
    expected = {
        key: (f"{calls:,}", minutes(seconds), money(cost, key[2]))
        for key, (calls, seconds, cost) in _line_sums(setup).items()
    }
    assert shown == expected
    # the totals table: per currency, from the calls
    totals = {r[0]: r[1:] for r in pages[0].rows[:2]}
    eur = [v for k, v in _line_sums(setup).items() if k[2] == "EUR"]
    assert totals["EUR"] == [
        "2",
        f"{sum(v[0] for v in eur):,}",
        minutes(sum(v[1] for v in eur)),
        money(sum(v[2] for v in eur), "EUR"),
    ]


def test_the_lines_download_is_a_csv_attachment_of_every_line(setup):
    answer = setup.get(BASE + "lines.csv")
    assert answer.headers["content-type"].startswith("text/csv")
    assert answer.headers["content-disposition"] == (
        f'attachment; filename="billing_lines_{MONTH}.csv"'
    )
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == [
        "billing_month",
        "customer_id",
        "sequence_number",
        "currency",
        "calls",
        "billed_seconds",
        "minutes",
        "total",
    ]
    expected = sorted(
        [
            MONTH,
            *key,
            str(calls),
            str(seconds),
            str(round(seconds / 60, 1)),
            str(from_minor_units(cost, key[2])),
        ]
        for key, (calls, seconds, cost) in _line_sums(setup).items()
    )
    assert sorted(rows[1:]) == expected
    # the month page's card links to it from inside the frame: no new window
    page = setup.get(f"http://testserver/month/{MONTH}/lines").text
    assert 'href="lines.csv"' in page and "target=" not in page


def test_drilling_from_a_customer_to_a_user_s_calls_shows_every_call_once(setup):
    lines = setup.page(BASE + "lines")
    customer_url = urljoin(BASE + "lines", lines.href("C1"))
    assert customer_url == BASE + "customer/C1"
    customer = setup.page(customer_url)
    assert {row[0] for row in customer.rows} == {"1001", "1002"}
    line_url = urljoin(customer_url, customer.href("1001"))
    assert line_url == BASE + "customer/C1/line/1001/EUR"
    users = setup.page(line_url)
    by_user = {
        user: (int(n), int(sec), int(cost))
        for user, n, sec, cost in setup.sql(
            "SELECT user_id, count(*), sum(billed_seconds), sum(cost_minor) FROM billed_call "
            "WHERE customer_id = 'C1' AND sequence_number = '1001' AND currency = 'EUR' "
            "GROUP BY user_id"
        )
    }
    assert {row[0]: row[1:] for row in users.rows} == {
        (PHONE_MASKED if user == PHONE else user): [
            f"{n:,}",
            minutes(sec),
            money(cost, "EUR"),
        ]
        for user, (n, sec, cost) in by_user.items()
    }
    calls_url = urljoin(line_url, users.href(PHONE_MASKED))
    assert calls_url.startswith(BASE + "customer/C1/line/1001/EUR/user/!")  # sealed
    assert PHONE[1:] not in calls_url and PHONE[-7:] not in calls_url
    pages = _walk(setup, calls_url)
    assert [len(p.rows) for p in pages] == [100, 100, 50]
    shown = [(row[0], int(row[1].replace(",", ""))) for p in pages for row in p.rows]
    stored = setup.sql(
        "SELECT source_file, source_row, billed_seconds, cost_minor, start_utc FROM billed_call "
        "WHERE user_id = :user ORDER BY source_file, source_row",
        user=PHONE,
    )
    assert shown == [(r.source_file, r.source_row) for r in stored]  # each once, in order
    first = pages[0].rows[0]
    assert first[3] == stored[0].start_utc.astimezone(
        __import__("zoneinfo").ZoneInfo(web.config().billing.timezone)
    ).strftime("%Y-%m-%d %H:%M:%S %Z")
    assert first[4:6] == [str(stored[0].billed_seconds), money(stored[0].cost_minor, "EUR")]


def test_ids_with_reserved_characters_are_one_path_segment_each(setup):
    customer = setup.page(BASE + "customer/" + quote(ODD_CUSTOMER, safe=""))
    line_url = urljoin(BASE + "customer/C%202%2Fx", customer.href("9/1"))
    assert line_url == BASE + "customer/C%202%2Fx/line/9%2F1/EUR"
    users = setup.page(line_url)
    assert [row[0] for row in users.rows] == ["carol"]
    line = setup.page(BASE + "customer/C1/line/1001/EUR")
    slashed_url = urljoin(BASE + "customer/C1/line/1001/EUR", line.href(SLASHED))
    assert slashed_url.endswith("/user/alice%2Fops%20team")
    calls = setup.page(slashed_url)
    assert len(calls.rows) == 7
    # the way back: crumbs to the line, the customer and the month resolve where they should
    assert urljoin(slashed_url, calls.href("Customer C1")) == BASE + "customer/C1"
    assert urljoin(slashed_url, calls.href(f"Month {MONTH}")) == BASE[:-1]


def test_phone_number_ids_are_shown_masked(setup):
    for url in (
        BASE + "customer/C1/line/1001/EUR",
        BASE + "customer/C1/line/1001/EUR/user/%2B46701234567",
        BASE + "not-billed/suspense",
        BASE + "not-billed/suspense/UNKNOWN_ACCOUNT/%2B46709999999",
    ):
        visible = setup.page(url).visible()
        assert PHONE not in visible and SUSPENSE_PHONE not in visible, url
        assert PHONE_MASKED in visible or "+4670*****99" in visible, url


def test_not_billed_groups_give_the_mail_s_minutes_and_page_every_row_once(setup):
    unbillable = setup.page(BASE + "not-billed/unbillable")
    mail = report.unbillable_ranges(setup.frames["unbillable"])
    assert [(r[0], r[1], r[2], r[3]) for r in unbillable.rows] == [
        (
            {"NO_TARIFF_PREFIX": "no tariff for the number"}.get(
                item["reason_code"], "no tariff price at the call's time"
            ),
            item["number_range"],
            str(item["calls"]),
            f"{item['minutes']:,.1f}",
        )
        for item in mail
    ]
    suspense = setup.page(BASE + "not-billed/suspense")
    keys = [row[1] for row in suspense.rows]
    assert keys == ["+4670*****99", "ghost", "unknown"]  # most calls first
    group_url = urljoin(BASE + "not-billed/suspense", suspense.href("+4670*****99"))
    assert group_url.startswith(BASE + "not-billed/suspense/UNKNOWN_ACCOUNT/!")
    assert SUSPENSE_PHONE[-7:] not in group_url
    pages = _walk(setup, group_url)
    shown = [(row[0], int(row[1].replace(",", ""))) for p in pages for row in p.rows]
    stored = setup.sql(
        "SELECT source_file, source_row, detail FROM billing_exception "
        "WHERE kind = 'suspense' AND detail LIKE :key ORDER BY source_file, source_row",
        key=f'%"{SUSPENSE_PHONE}"%',
    )
    assert len(pages) == 2 and shown == [(r.source_file, r.source_row) for r in stored]
    seconds = setup.frames["suspense"].query("user_id == @SUSPENSE_PHONE")["duration_seconds"]
    assert f"{seconds.size} calls, {minutes(int(seconds.sum()))} minutes" in pages[0].visible()
    # the group of rows without an account: an empty last segment
    empty = setup.page(urljoin(BASE + "not-billed/suspense", suspense.href("unknown")))
    assert len(empty.rows) == 2


def test_a_sealed_id_opens_only_unaltered(setup):
    """The address of a phone-number user carries its id sealed: the page opens with the seal
    made by the app, not with one altered, nor with one made by another deployment's key."""
    line_url = BASE + "customer/C1/line/1001/EUR"
    sealed = urljoin(line_url, setup.page(line_url).href(PHONE_MASKED))
    assert len(setup.page(sealed).rows) == 100
    head, token = sealed.rsplit("!", 1)
    altered = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    foreign = "!" + Fernet(Fernet.generate_key()).encrypt(PHONE.encode()).decode()
    for url in (f"{head}!{altered}", head + foreign):
        answer = setup.client.get(url)
        assert answer.status_code == 404 and "not made by this Billing app" in answer.text


@pytest.mark.parametrize(
    "path",
    [
        "month/2026-08/lines",  # no batch
        "month/2026-13/lines",  # not a month
        "month/2026-09/customer/C9",
        "month/2026-09/customer/C1/line/1001/USD",
        "month/2026-09/customer/C1/line/1001/EUR/user/nobody",
        "month/2026-09/customer/C1/elsewhere",
        "month/2026-09/customer/C1/line/1001/EUR/user/%2B46701234567?file=x&row=-1",
        "month/2026-09/not-billed/duplicate",
        "month/2026-09/not-billed/suspense/UNKNOWN_ACCOUNT/nobody",
        "month/2026-09/lines?customer=C1",
    ],
)
def test_bad_or_unknown_addresses_are_404_pages(setup, path):
    answer = setup.client.get("http://testserver/" + path)
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert "<h1>Not found</h1>" in answer.text


def test_a_long_id_is_not_echoed(setup):
    long_id = "9" * 5000
    for path in (f"customer/{long_id}", f"customer/C1/line/{long_id}/EUR", f"../{long_id}/lines"):
        answer = setup.client.get(BASE + path)
        assert answer.status_code in (404, 422)
        assert "9" * 100 not in answer.text and len(answer.text) < 20_000


def test_the_pages_need_a_billing_reader(setup):
    from airflow.api_fastapi.app import init_auth_manager

    init_auth_manager()
    setup.client.app.dependency_overrides.clear()
    try:
        answer = setup.client.get(BASE + "lines")
        assert answer.status_code == 401
    finally:
        setup.client.app.dependency_overrides[billing_app.require_billing_reader] = lambda: None


def test_minutes_follow_the_mail_s_rounding():
    # 9 s is 0.15 min: the mail's round() gives 0.1 (the float below 0.15), not 0.2
    mail = report.unbillable_ranges(
        pd.DataFrame(
            {
                "number_range": ["+1"],
                "reason_code": ["R"],
                "transaction_id": ["t"],
                "duration_seconds": [9],
            }
        )
    )
    assert minutes(9) == pages.minutes(9) == str(mail[0]["minutes"]) == "0.2"  # 0.15, half up


def test_the_month_page_s_groups_are_the_rows_not_billed_counted_one_by_one(setup):
    """queries.not_billed reads the load's sums; here each non-billed row's detail is counted."""
    from cdr_billing.ui import queries

    batch_id = drill_queries.current_batch(setup.engine, MONTH)
    keys = {"unbillable": "number_range", "suspense": "user_id"}
    counted = {kind: Counter() for kind in keys}
    with setup.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT kind, reason_code, detail FROM billing_exception WHERE batch_id = :b"),
            {"b": batch_id},
        )
        for kind, reason_code, detail in rows:
            if kind in keys:
                counted[kind][(json.loads(detail).get(keys[kind]) or "", reason_code)] += 1
    shown = queries.not_billed(setup.engine, batch_id)
    for kind in keys:
        assert {(g.key, g.reason_code): g.calls for g in shown[kind]} == dict(counted[kind])
        assert [g.calls for g in shown[kind]] == sorted(
            (g.calls for g in shown[kind]), reverse=True
        )
    assert sum(counted["suspense"].values()) > 0 and sum(counted["unbillable"].values()) > 0
