"""The UI's default timezone: the line added to the UI's page, and only to it."""

from __future__ import annotations

import json

from starlette.applications import Starlette
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cdr_billing.ui.ui_timezone import DefaultUiTimezone, middlewares, with_default_timezone

UI_PAGE = '<html><head><title>Airflow</title></head><body><div id="root"></div></body></html>'


def _app() -> Starlette:
    app = Starlette(
        routes=[
            Route("/dags/x", lambda request: HTMLResponse(UI_PAGE)),
            Route("/other", lambda request: HTMLResponse("<html><head></head></html>")),
            Route("/api", lambda request: JSONResponse({"a": 1})),
        ]
    )
    app.add_middleware(DefaultUiTimezone, timezone="Europe/Zurich")
    return app


def test_the_ui_page_stores_the_billing_timezone_unless_one_is_chosen():
    page = TestClient(_app()).get("/dags/x")
    stored = json.dumps(json.dumps("Europe/Zurich"))
    assert f"localStorage.setItem('timezone',{stored})" in page.text
    assert "localStorage.getItem('timezone')===null" in page.text
    assert page.text.index("<script>") < page.text.index("</head>")
    assert int(page.headers["content-length"]) == len(page.content)


def test_other_answers_pass_unchanged():
    client = TestClient(_app())
    assert "<script>" not in client.get("/other").text
    assert client.get("/api").json() == {"a": 1}
    assert client.post("/dags/x").status_code == 405


def test_a_timezone_is_written_as_a_json_string_safely():
    page = with_default_timezone(UI_PAGE.encode(), "Etc/GMT+10").decode()
    assert 'localStorage.setItem(\'timezone\',"\\"Etc/GMT+10\\"")' in page


def test_off_by_default_setting_registers_nothing():
    assert middlewares("Europe/Zurich", enabled=False) == []
    (entry,) = middlewares("Europe/Zurich", enabled=True)
    assert entry["middleware"] is DefaultUiTimezone
    assert entry["kwargs"] == {"timezone": "Europe/Zurich"}
