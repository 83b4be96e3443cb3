"""The Billing page's Statements routes on a real PostgreSQL: the month's statements listed
(user ids masked, mail status), each opened as its page and PDF; ids of another month or
batch, or malformed, are 404."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader
from sqlalchemy import create_engine, select
from statement_seed import FULL_NUMBERS, batch

from cdr_billing.load import load_month
from cdr_billing.migrations import upgrade
from cdr_billing.schema import statement
from cdr_billing.ui import app as billing_app
from cdr_billing.ui import web
from cdr_devkit.services import connection_env

MONTH = "2026-05"


@pytest.fixture(scope="module")
def client(airflow_home, postgres):
    database = postgres.create_database("statements_routes")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in connection_env({"billing_db": postgres.connection(database)}).items():
            patch.setenv(key, value)
        engine = create_engine(postgres.url_of(database))
        upgrade(engine)
        old = load_month(engine, MONTH, "run-old", batch("run-old"), {}).batch_id
        load_month(engine, MONTH, "run-new", batch("run-new"), {})
        with engine.connect() as conn:
            ids = dict(
                conn.execute(
                    select(statement.c.user_id, statement.c.statement_id).where(
                        statement.c.batch_id != old
                    )
                ).all()
            )
            superseded = (
                conn.execute(select(statement.c.statement_id).where(statement.c.batch_id == old))
                .scalars()
                .first()
            )
        web.clear_engines()
        billing_app.app.dependency_overrides[billing_app.require_billing_reader] = lambda: None
        try:
            yield TestClient(billing_app.app), ids, superseded
        finally:
            billing_app.app.dependency_overrides.clear()
            web.clear_engines()
            engine.dispose()


def test_the_month_lists_its_current_statements_with_their_links(client):
    http, ids, superseded = client
    page = http.get(f"/month/{MONTH}/statements")
    assert page.status_code == 200
    assert all(f"statements/{i}.pdf" in page.text for i in ids.values())
    assert superseded not in page.text
    assert page.text.count(">pending<") == 3


def test_the_month_page_links_to_the_current_batch_statements(client):
    http, ids, _ = client
    page = http.get(f"/month/{MONTH}")
    assert page.status_code == 200
    assert f'href="{MONTH}/statements"' in page.text
    assert f"The users&#x27; statements ({len(ids)})" in page.text


def test_a_statement_opens_as_its_page_and_its_pdf(client):
    http, ids, _ = client
    html = http.get(f"/month/{MONTH}/statements/{ids['u1']}.html")
    assert html.status_code == 200 and "+46701234xxx" in html.text
    assert "default-src 'none'" in html.headers["content-security-policy"]
    pdf = http.get(f"/month/{MONTH}/statements/{ids['u1']}.pdf")
    assert pdf.headers["content-type"] == "application/pdf"
    text = PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    assert "1.92 EUR" in text and FULL_NUMBERS[0] not in text.replace(" ", "")


@pytest.mark.parametrize(
    "path",
    [
        "/month/2026-04/statements/{u1}.pdf",  # another month
        "/month/2026-05/statements/{old}.pdf",  # a superseded batch's
        "/month/2026-05/statements/{u1}.exe",
        "/month/2026-05/statements/u1.pdf",
        "/month/2026-05/statements/" + "0" * 32 + ".html",
    ],
)
def test_other_ids_are_not_found(client, path):
    http, ids, superseded = client
    assert http.get(path.format(u1=ids["u1"], old=superseded)).status_code == 404
