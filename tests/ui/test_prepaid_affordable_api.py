"""GET /api/prepaid/affordable of the billing app, in process: Airflow's own auth manager and
JWT (the session's migrated Airflow home), a real PostgreSQL billing database."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert

from cdr_billing.config import load_config
from cdr_billing.migrations import upgrade
from cdr_billing.schema import prepaid_account
from cdr_billing.tariff import read_tariff_file, store_version
from cdr_billing.ui import app as billing_app
from cdr_billing.ui import web
from cdr_devkit.services import connection_env

TARIFF = """prefix,destination,price_per_minute,connection_fee,first_increment,next_increment,\
minimum_charge,currency
+46,Sweden,0.60,,30,6,,EUR
"""


@pytest.fixture
def client(airflow_home, postgres, tmp_path, monkeypatch) -> TestClient:
    database = postgres.create_database("prepaid_affordable_api")
    for key, value in connection_env({"billing_db": postgres.connection(database)}).items():
        monkeypatch.setenv(key, value)
    engine = create_engine(postgres.url_of(database))
    upgrade(engine)
    path = tmp_path / "tariff.csv"
    path.write_text(TARIFF)
    store_version(engine, read_tariff_file(path, load_config().billing), path.name, "sha-api")
    with engine.begin() as conn:
        conn.execute(
            insert(prepaid_account).values(
                account_id="acct-a",
                currency="EUR",
                low_balance_minor=500,
                topup_minor=2000,
                lock_level_minor=0,
                unlock_level_minor=100,
                max_concurrent_calls=1,
                active=True,
                balance_minor=100,
                locked=False,
                updated_at="2026-11-03T07:30:00+00:00",
            )
        )
    engine.dispose()
    web.clear_engines()
    yield TestClient(billing_app.app)
    web.clear_engines()


def _token() -> str:
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return init_auth_manager().generate_jwt(SimpleAuthManagerUser(username="op", role="admin"))


def test_the_switch_gets_the_longest_affordable_call_as_json(client):
    headers = {"Authorization": f"Bearer {_token()}"}
    query = {"account": "acct-a", "destination": "+46701234567"}

    answer = client.get("/api/prepaid/affordable", params=query, headers=headers)

    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    # 1 c a second, 30 s then 6 s steps: 100 c buy 30 + 11 x 6 = 96 s
    assert (body["seconds"], body["prefix"], body["balance_minor"]) == (96, "46", 100)
    assert body["balance_updated_at"] == "2026-11-03T07:30:00+00:00"
    unknown = client.get(
        "/api/prepaid/affordable", params={**query, "account": "nobody"}, headers=headers
    )
    assert unknown.status_code == 404
    assert client.get("/api/prepaid/affordable", params=query).status_code == 401
