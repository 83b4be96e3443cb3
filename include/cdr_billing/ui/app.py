"""The Billing page's FastAPI app, which the Airflow api-server mounts under /billing.

Auth is Airflow's own: every route needs a user of the configured auth manager who may read
the runs of the billing DAG. The JWT comes from the `Authorization: Bearer` header (API
clients) or from the `_token` cookie the Airflow UI sets at login, which the browser sends with
the page's iframe. No token: 401; an invalid token: 403; a user without read access: 403.

Importing this module stays light (no pandas, no Airflow API modules), since every Airflow
process that loads plugins imports it: the queries and Airflow's security helpers are imported
on the first request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from cdr_billing.ui import pages

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from cdr_billing.config import PipelineConfig
    from cdr_billing.ui.queries import MonthDetail, MonthFiles

BILLING_DAG_ID = "cdr_billing_monthly"
Month = Annotated[
    str, PathParameter(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="billing month, YYYY-MM")
]
# The pages load nothing from elsewhere and run no script; only Airflow's UI may frame them.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "frame-ancestors 'self'; base-uri 'none'"
)
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
# Data Docs run scripts from public CDNs: a sandbox gives them an origin of their own, away from
# Airflow's cookies and API.
DATA_DOCS_POLICY = "sandbox allow-scripts allow-popups; frame-ancestors 'self'"


async def require_billing_reader(
    request: Request,
    credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))
    ],
) -> None:
    """Let through an Airflow user who may read the billing DAG's runs; else 401 or 403."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )
    from airflow.api_fastapi.core_api.security import get_user

    user = await get_user(request, _oauth_token=None, bearer_credentials=credentials)
    if not get_auth_manager().is_authorized_dag(
        method="GET",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=BILLING_DAG_ID),
        user=user,
    ):
        raise HTTPException(403, "You may not read the runs of the billing DAG.")


app = FastAPI(
    title="Billing",
    dependencies=[Depends(require_billing_reader)],
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)


@cache
def _config() -> PipelineConfig:
    from cdr_billing.config import load_config

    return load_config()


@cache
def _engine(conn_id: str) -> Engine:
    from cdr_billing.database import billing_engine

    return billing_engine(conn_id)


def _billing_db() -> Engine:
    return _engine(_config().billing.connection)


def _html(document: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        document, status_code, headers={**NO_STORE, "Content-Security-Policy": PAGE_POLICY}
    )


def _file(path: Path | None, download: bool = False, policy: str | None = None) -> FileResponse:
    if path is None:
        raise HTTPException(404, "This month has no such file.")
    headers = {**NO_STORE, "Content-Security-Policy": policy} if policy else NO_STORE
    return FileResponse(path, headers=headers, filename=path.name if download else None)


@app.exception_handler(StarletteHTTPException)
async def _error_page(request: Request, error: StarletteHTTPException) -> Response:
    """Errors as a short page; 401 links to Airflow's login, back to this page."""
    link = None
    if error.status_code == 401:
        from airflow.api_fastapi.app import get_auth_manager

        link = (get_auth_manager().get_url_login(next_url=str(request.url)), "Log in to Airflow")
    titles = {401: "Not logged in", 403: "Not allowed", 404: "Not found"}
    document = pages.message_page(titles.get(error.status_code, "Error"), str(error.detail), link)
    return _html(document, error.status_code)


@app.get("/", response_class=HTMLResponse)
def months_page() -> HTMLResponse:
    """The billing months."""
    from cdr_billing.ui import queries

    return _html(pages.months_page(queries.month_summaries(_billing_db())))


def _month(billing_month: str) -> MonthDetail:
    from cdr_billing.ui import queries

    detail = queries.month_detail(_billing_db(), _config(), billing_month)
    if detail is None:
        raise HTTPException(404, f"No batch of billing month {billing_month} has been loaded.")
    return detail


@app.get("/month/{billing_month}", response_class=HTMLResponse)
def month_page(billing_month: Month) -> HTMLResponse:
    """One billing month."""
    return _html(pages.month_page(_month(billing_month)))


def _files(billing_month: str) -> MonthFiles:
    from cdr_billing.ui import queries

    files = queries.current_files(_billing_db(), _config(), billing_month)
    if files is None:
        raise HTTPException(404, f"Billing month {billing_month} has no current batch.")
    return files


@app.get("/month/{billing_month}/files/{name}")
def billing_file(
    billing_month: Month, name: Literal["billing-csv", "billing-xlsx"]
) -> FileResponse:
    """The current batch's billing file, as a download."""
    files = _files(billing_month)
    return _file(files.billing_csv if name == "billing-csv" else files.billing_xlsx, download=True)


@app.get("/month/{billing_month}/data-docs/{relative:path}")
def data_docs(billing_month: Month, relative: str) -> FileResponse:
    """A file of the current batch's Great Expectations Data Docs site."""
    from cdr_billing.ui import queries

    return _file(queries.data_docs_file(_files(billing_month), relative), policy=DATA_DOCS_POLICY)


@app.get("/api/prepaid/affordable")
def prepaid_affordable(
    account: Annotated[str, Query(min_length=1, max_length=128)],
    destination: Annotated[str, Query(min_length=1, max_length=40)],
) -> JSONResponse:
    """The longest call (seconds) an account's balance affords to a destination now, for a
    switch at call setup; stale by the balance's age (balance_updated_at)."""
    from cdr_billing.prepaid.affordable import AffordableError, affordable_for

    try:
        found = affordable_for(
            _billing_db(), account, destination, datetime.now(UTC), _config().billing
        )
    except AffordableError as exc:
        raise HTTPException(404, str(exc)) from None
    return JSONResponse(found.as_json(), headers=NO_STORE)
