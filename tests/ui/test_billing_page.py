"""The Billing page of the Airflow UI, over HTTP against a running api-server that loads the
project's plugins folder. Months 2026-05 and 2026-06 are seeded into its billing database
(`billing_ui`) with the pipeline's own load code (billing_seed.py, the `seeded` fixture); the
backfill test checks the months before 2026-04 there, so these tests assert on their own months
only."""

from __future__ import annotations

import configparser
import http.client
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from decimal import Decimal
from html import unescape
from html.parser import HTMLParser
from uuid import uuid4

import jwt
import pytest
from billing_seed import MAY_COUNTS, MAY_LINES, PHONE

from cdr_billing.money import from_minor_units
from cdr_billing.report import OUTCOME_LABELS
from cdr_billing.ui.pages import reason_label
from cdr_devkit.airflow_env import PROJECT_ROOT


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def get(airflow, path: str, token: str | None = None, cookie: str | None = None) -> Answer:
    """GET a path exactly as written (no normalisation of ../), with a bearer token or a _token
    cookie."""
    headers = {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"
    connection = http.client.HTTPConnection("127.0.0.1", airflow.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return Answer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def admin_get(airflow, path: str) -> Answer:
    answer = get(airflow, path, token=airflow.token())
    assert answer.status == 200, (path, answer.status, answer.body[:500])
    return answer


class Rows(HTMLParser):
    """Every table row of a page, as the text of its cells (a <br> becomes " | ")."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append(" | ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def starting(self, first: str) -> list[str]:
        """The one row whose first cell is `first`."""
        found = [row for row in self.rows if row and row[0] == first]
        assert len(found) == 1, (first, self.rows)
        return found[0]


def amount(text: str) -> tuple[Decimal, str]:
    """Parse "1,234.56 EUR"."""
    number, currency = text.split()
    return Decimal(number.replace(",", "")), currency


PROTECTED = [
    "/billing/",
    "/billing/month/2026-05",
    "/billing/month/2026-05/files/billing-csv",
    "/billing/month/2026-05/validation",
    "/billing/runs",
]


def test_the_plugin_is_registered_without_import_errors(running_airflow):
    plugins = {p["name"]: p for p in running_airflow.api("GET", "/plugins")["plugins"]}
    plugin = plugins["cdr_billing_ui"]
    assert [(a["name"], a["url_prefix"]) for a in plugin["fastapi_apps"]] == [
        ("Billing", "/billing")
    ]
    [view] = plugin["external_views"]
    assert (view["name"], view["href"], view["destination"], view["url_route"]) == (
        "Billing",
        "/billing/",
        "nav",
        "billing",
    )
    errors = running_airflow.api("GET", "/plugins/importErrors")["import_errors"]
    assert not [e for e in errors if "cdr_billing_ui" in e["source"]]


def test_the_plugin_imports_without_pandas_or_airflow_api_modules():
    code = (
        "import sys; sys.path.insert(0, 'plugins'); import cdr_billing_ui; "
        "print([m for m in ('pandas', 'airflow.api_fastapi.core_api.security', "
        "'cdr_billing.ui.queries') if m in sys.modules])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("path", PROTECTED)
def test_without_a_valid_token_nothing_is_shown(running_airflow, seeded, path):
    anonymous = get(running_airflow, path)
    assert anonymous.status == 401
    assert "Log in" in anonymous.text and "C2001" not in anonymous.text
    for forged in (
        get(running_airflow, path, token="not-a-jwt"),
        get(running_airflow, path, cookie="not-a-jwt"),
    ):
        assert forged.status == 403
        assert b"C2001" not in forged.body


def _token_with_role(airflow, role: str | None) -> str:
    """A JWT signed like the api-server's own, for a user with the given SimpleAuthManager role."""
    settings = configparser.ConfigParser(interpolation=None)
    settings.read(airflow.airflow_home / "airflow.cfg")
    admin_token = airflow.token()
    claims = {
        **jwt.decode(admin_token, options={"verify_signature": False}),
        "sub": "clerk",
        "role": role,
        "jti": uuid4().hex,
    }
    return jwt.encode(
        claims,
        settings["api_auth"]["jwt_secret"],
        algorithm=jwt.get_unverified_header(admin_token)["alg"],
    )


@pytest.mark.filterwarnings(
    "ignore::jwt.warnings.InsecureKeyLengthWarning"
)  # the test Airflow's generated secret
def test_a_user_the_auth_manager_denies_read_access_is_refused(running_airflow, seeded):
    refused = get(
        running_airflow, "/billing/month/2026-05", token=_token_with_role(running_airflow, None)
    )
    assert refused.status == 403
    assert (
        "You may not read the runs of the billing DAG." in refused.text
        and "C2001" not in refused.text
    )
    assert (
        get(
            running_airflow,
            "/billing/month/2026-05",
            token=_token_with_role(running_airflow, "VIEWER"),
        ).status
        == 200
    )


def test_the_ui_cookie_is_accepted_like_a_bearer_token(running_airflow, seeded):
    answer = get(running_airflow, "/billing/", cookie=running_airflow.token())
    assert answer.status == 200
    assert "frame-ancestors 'self'" in answer.headers["content-security-policy"]


def test_the_months_list_shows_status_current_batch_totals_and_counts(running_airflow, seeded):
    rows = Rows(admin_get(running_airflow, "/billing/").text)
    assert rows.rows[0][:3] == ["Month", "Status", "Current batch"]
    may = rows.starting("2026-05")
    (
        month,
        status,
        batch,
        loaded,
        runs,
        lines,
        totals,
        read,
        billed,
        unbillable,
        suspense,
        prepaid,
        balance,
    ) = may
    assert (status, batch, runs, lines) == ("current", str(seeded.may), "2", "4")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d CES?T", loaded)  # the billing timezone
    assert [amount(t) for t in totals.split(" | ")] == [
        (Decimal("1734.57"), "EUR"),
        (Decimal("99.99"), "SEK"),
    ]
    assert (read, billed, unbillable, suspense, prepaid) == ("26", "17", "2", "3", "2")
    assert "balanced" in balance
    june = rows.starting("2026-06")
    assert june[1:3] == ["current", str(seeded.june)]
    assert amount(june[6]) == (Decimal("7.00"), "EUR")
    assert "does not add up" in june[12]


def test_the_month_page_totals_per_customer_equal_the_seeded_lines(running_airflow, seeded):
    rows = Rows(admin_get(running_airflow, "/billing/month/2026-05").text)
    expected = MAY_LINES.groupby(["customer_id", "currency"]).agg(
        total=("total_minor", "sum"), lines=("total_minor", "size"), calls=("call_count", "sum")
    )
    for (customer, currency), line in expected.iterrows():
        _, shown_currency, lines, calls, total = rows.starting(customer)
        assert (shown_currency, int(lines), int(calls)) == (currency, line.lines, line.calls)
        assert amount(total) == (from_minor_units(int(line.total), currency), currency)
    assert rows.starting("Total")[4] == "1,734.57 EUR | 99.99 SEK"


def test_the_chart_has_one_bar_per_customer(running_airflow, seeded):
    page = admin_get(running_airflow, "/billing/month/2026-05").text
    bars = re.findall(r'<rect class="bar" data-customer="([^"]+)"', page)
    assert sorted(bars) == ["C2001", "C2002", "C2003"]
    assert page.count("<svg") == 2  # one chart per currency


def test_reconciliation_unbillable_ranges_and_suspense_accounts_without_phone_numbers(
    running_airflow, seeded
):
    page = admin_get(running_airflow, "/billing/month/2026-05").text
    rows = Rows(page)
    # reasons in words, the code as the tooltip
    assert rows.starting("+8821") == ["+8821", reason_label("NO_TARIFF_PREFIX"), "2"]
    assert rows.starting("acct-unknown-7") == ["acct-unknown-7", "account unknown", "3"]
    assert '<span class="code" title="UNKNOWN_ACCOUNT">account unknown</span>' in page
    # each outcome said in words, e.g. "prepaid (debited to balances)"
    assert {name: rows.starting(OUTCOME_LABELS[name])[1] for name in MAY_COUNTS} == {
        k: str(v) for k, v in MAY_COUNTS.items()
    }
    assert PHONE not in page and PHONE[1:] not in page
    assert [row[:2] for row in rows.rows if row[1] in ("current", "superseded")] == [
        [str(seeded.may), "current"],
        [str(seeded.may_old), "superseded"],
    ]


def test_the_links_serve_the_billing_file(running_airflow, seeded):
    page = admin_get(running_airflow, "/billing/month/2026-05").text
    for link in ("2026-05/files/billing-csv", "2026-05/files/billing-xlsx"):
        assert f'href="{link}"' in page
    csv_answer = admin_get(running_airflow, "/billing/month/2026-05/files/billing-csv")
    assert csv_answer.body == seeded.billing_csv.read_bytes()
    assert "attachment" in csv_answer.headers["content-disposition"]
    assert admin_get(running_airflow, "/billing/month/2026-05/files/billing-xlsx").body.startswith(
        b"PK"
    )


def _links(page: str) -> list[str]:
    return [unescape(href) for href in re.findall(r'<a href="([^"]+)"', page)]


def test_the_month_page_links_each_customer_and_group_to_its_rows(running_airflow, seeded):
    page = admin_get(running_airflow, "/billing/month/2026-05").text
    links = _links(page)
    customers = [link for link in links if "/customer/" in link]
    groups = [link for link in links if "/not-billed/" in link and link.count("/") > 3]
    assert sorted(customers) == [f"2026-05/customer/{c}" for c in ("C2001", "C2002", "C2003")]
    assert sorted(groups) == [
        "2026-05/not-billed/suspense/UNKNOWN_ACCOUNT/acct-unknown-7",
        "2026-05/not-billed/unbillable/NO_TARIFF_PREFIX/%2B8821",
    ]
    for link in customers + groups:  # each opens a page of its rows
        answer = admin_get(running_airflow, f"/billing/month/{link}")
        assert answer.status == 200, link
    for card in ("2026-05/lines", "2026-05/lines.csv", "../month/2026-05/validation"):
        assert card in links


def test_the_month_page_s_downloads_and_run_links_work_in_the_ui_s_frame(running_airflow, seeded):
    """The frame allows downloads but neither new windows nor top navigation: the files are
    plain downloads, the runs open in the UI through the page's script."""
    page = admin_get(running_airflow, "/billing/month/2026-05").text
    assert "target=" not in page
    for name in ("billing-csv", "billing-xlsx"):
        assert re.search(rf'<a href="2026-05/files/{name}" download>', page)
    runs = re.findall(r'<a href="([^"]+)" data-ui-href>', page)
    assert "../../dags/cdr_billing_monthly/runs/ui_2026-05_second" in runs
    answer = admin_get(running_airflow, "/billing/month/2026-05")
    assert "script-src 'sha256-" in answer.headers["content-security-policy"]


def test_the_months_list_names_the_months_not_billed(running_airflow, seeded):
    page = admin_get(running_airflow, "/billing/").text
    notice = re.search(r'<p class="notice">(.*?)</p>', page, re.S).group(1)
    # as the months tried page says them (the session's other tests bill or run some months)
    tried = Rows(admin_get(running_airflow, "/billing/runs").text).rows[1:]
    open_months = [f"{row[0]} {row[1]}" for row in tried if row[1] != "billed"]
    assert open_months and "2026-05 billed" in [f"{r[0]} {r[1]}" for r in tried]
    more = f" and {len(open_months) - 6} more" if len(open_months) > 6 else ""
    assert notice.startswith(f"Not billed: {', '.join(open_months[:6])}{more}. ")
    assert '<a href="runs">Months tried</a>' in notice


@pytest.mark.parametrize(
    "path",
    [
        "/billing/month/2026-05/data-docs/../../report.json",
        "/billing/month/2026-05/data-docs/..%2F..%2Freport.json",
        "/billing/month/2026-05/data-docs/%2e%2e/%2e%2e/report.json",
        "/billing/month/2026-05/data-docs//etc/passwd",
        "/billing/month/2026-05/files/..%2F..%2Freport.json",
        "/billing/month/..%2F2026-05/files/billing-csv",
        "/billing/month/2026-05/data-docs/files/0123456789abcdef/gx_results/result.json",
        "/billing/month/2026-05/validation?run=..%2F..%2Fui_2026-05_second",
    ],
)
def test_paths_outside_the_billing_files_are_refused(running_airflow, seeded, path):
    """The Great Expectations site once served under data-docs/ is gone (its results are a page
    of their own, /month/M/validation): nothing of the run's folder is served there."""
    answer = get(running_airflow, path, token=running_airflow.token())
    assert answer.status in (404, 422), (answer.status, answer.body[:300])
    assert b"root:x:0:" not in answer.body and b"billing_file" not in answer.body


def test_report_files_outside_the_work_root_are_neither_linked_nor_served(running_airflow, seeded):
    page = admin_get(running_airflow, "/billing/month/2026-06").text
    assert "files/billing" not in page and "data-docs" not in page
    for name in ("files/billing-csv", "files/billing-xlsx"):
        answer = get(
            running_airflow, f"/billing/month/2026-06/{name}", token=running_airflow.token()
        )
        assert answer.status == 404
        assert b"not for the billing page" not in answer.body


def test_a_month_without_batches_is_not_found(running_airflow, seeded):
    assert (
        get(running_airflow, "/billing/month/1999-01", token=running_airflow.token()).status == 404
    )
    assert (
        get(running_airflow, "/billing/month/2025-13", token=running_airflow.token()).status == 422
    )
