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
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import uuid4

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cdr_billing.config import BILLING_DAG_ID
from cdr_billing.ui import drill_routes, pages, runs_routes, statements_routes
from cdr_billing.ui.forms import small_form
from cdr_billing.ui.runs_routes import airflow_runs
from cdr_billing.ui.web import (
    NO_STORE,
    Month,
    billing_db,
    config,
    file,
    html,
    secret_key,
)

if TYPE_CHECKING:
    from cdr_billing.ui.queries import MonthDetail, MonthFiles

# Posting to prepaid balances needs edit access to the prepaid DAG's runs (Airflow's own
# permission: with the simple auth manager the roles user, op and admin; viewer may only read).
PREPAID_DAG_ID = "cdr_prepaid_balances"
MAX_ACCOUNT_ID = 128
MAX_FORM_BYTES = 16_384
FORM_FIELDS = ("key", "csrf_token", "kind", "amount", "reason")
MAX_FIELD = {"key": 64, "csrf_token": 100, "kind": 16, "amount": 32, "reason": 500}


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
    request.state.user = user  # who posts the Prepaid pages' forms
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


TITLES = {
    401: "Not logged in",
    403: "Not allowed",
    404: "Not found",
    405: "Not possible here",
    422: "Not valid",
}
MAX_DETAIL = 300  # characters of an error's text shown: it may repeat part of the address
MAX_BACK_DEPTH = 16  # deeper addresses link back by the app's absolute path
MAX_NEXT_URL = 1000  # longer addresses are not where the login leads back to


def _app_path(request: Request) -> str:
    """The request's path inside this app, as sent (percent-encoded), without its mount prefix."""
    raw = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1")
    root = request.scope.get("root_path", "")
    return raw[len(root) :] if root and raw.startswith(root) else raw


def _is_api(request: Request) -> bool:
    return _app_path(request).startswith("/api/")


def _way_back(request: Request) -> tuple[str, str]:
    """A link to the Billing months: relative to the address's folder (any prefix works), or
    the app's absolute path for very deep addresses."""
    depth = _app_path(request).count("/") - 1
    href = "./" if depth <= 0 else "../" * depth
    if depth > MAX_BACK_DEPTH:
        href = request.scope.get("root_path", "") + "/"
    return href, "Back to the Billing months"


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


def _error_response(request: Request, status: int, text: str) -> Response:
    """The error as JSON for the API, as a short page with a way back for the pages."""
    if _is_api(request):
        return JSONResponse({"detail": _bounded(text)}, status, headers=NO_STORE)
    link = _way_back(request)
    if status == 401:
        from airflow.api_fastapi.app import get_auth_manager

        back = str(request.url)
        if len(back) > MAX_NEXT_URL:  # not echoed: back to the Billing months instead
            back = str(request.url.replace(path=request.scope.get("root_path", "") + "/", query=""))
        link = (get_auth_manager().get_url_login(next_url=back), "Log in to Airflow")
    document = pages.message_page(TITLES.get(status, "Error"), _bounded(text), link)
    return html(document, status)


@app.exception_handler(StarletteHTTPException)
async def _error_page(request: Request, error: StarletteHTTPException) -> Response:
    """Errors as a short page (401 links to Airflow's login, back to this page; others back to
    the Billing months); a route's own text, Starlette's for unknown addresses and methods."""
    texts = {
        404: "There is no Billing page at this address.",
        405: "This address does not take that kind of request.",
    }
    default = error.detail in ("Not Found", "Method Not Allowed")
    text = texts.get(error.status_code, str(error.detail)) if default else str(error.detail)
    return _error_response(request, error.status_code, text)


@app.exception_handler(RequestValidationError)
async def _invalid_request_page(request: Request, error: RequestValidationError) -> Response:
    """A malformed URL: a short page (JSON for the switch's API), not the validator's dump."""
    return _error_response(request, 422, "The address or its parameters are not valid here.")


@app.exception_handler(Exception)
async def _server_error_page(request: Request, error: Exception) -> Response:
    """Anything unexpected: a short page, not a bare "Internal Server Error" (the error itself
    goes to the api-server's log)."""
    return _error_response(
        request, 500, "The Billing page met an error; it is in the api-server's log."
    )


@app.get("/", response_class=HTMLResponse)
def months_page() -> HTMLResponse:
    """The billed months, and which months are not billed."""
    from cdr_billing.ui import queries, runs_pages, runs_queries

    settings = config()
    tried = runs_queries.months_tried(
        billing_db(), settings, datetime.now(UTC), airflow_runs(settings.billing.timezone)
    )
    summaries = queries.month_summaries(billing_db())
    return html(pages.months_page(summaries, runs_pages.attention(tried)))


def _month(billing_month: str) -> MonthDetail:
    from cdr_billing.ui import queries

    detail = queries.month_detail(billing_db(), config(), billing_month)
    if detail is None:
        raise HTTPException(404, f"No batch of billing month {billing_month} has been loaded.")
    return detail


@app.get("/month/{billing_month}", response_class=HTMLResponse)
def month_page(billing_month: Month) -> HTMLResponse:
    """One billing month."""
    from cdr_billing.ui import month_pages

    return html(month_pages.month_page(_month(billing_month)))


def _files(billing_month: str) -> MonthFiles:
    from cdr_billing.ui import queries

    files = queries.current_files(billing_db(), config(), billing_month)
    if files is None:
        raise HTTPException(404, f"Billing month {billing_month} has no current batch.")
    return files


@app.get("/month/{billing_month}/files/{name}")
def billingfile(billing_month: Month, name: Literal["billing-csv", "billing-xlsx"]) -> FileResponse:
    """The current batch's billing file, as a download."""
    files = _files(billing_month)
    return file(files.billing_csv if name == "billing-csv" else files.billing_xlsx, download=True)


@app.get("/api/prepaid/affordable")
def prepaid_affordable(
    account: Annotated[str, Query(min_length=1, max_length=128)],
    destination: Annotated[str, Query(min_length=1, max_length=40)],
) -> JSONResponse:
    """The longest call (seconds) an account's balance affords to a destination now, for a
    switch at call setup, at most the longest call the switch allows (prepaid.max_call_seconds);
    stale by the balance's age (balance_updated_at)."""
    from cdr_billing.prepaid.affordable import (
        MAX_AFFORDABLE_SECONDS,
        AffordableError,
        affordable_for,
    )

    settings = config()
    cap = settings.prepaid.max_call_seconds or MAX_AFFORDABLE_SECONDS
    try:
        found = affordable_for(
            billing_db(), account, destination, datetime.now(UTC), settings.billing, cap
        )
    except AffordableError as exc:
        raise HTTPException(404, str(exc)) from None
    return JSONResponse(found.as_json(), headers=NO_STORE)


app.include_router(runs_routes.router)
app.include_router(drill_routes.router)
app.include_router(statements_routes.router)

# ---------------------------------------------------------------------------------------------
# Prepaid pages (prepaid_queries, prepaid_pages)


def _exposure_limits() -> dict[str, int]:
    from cdr_billing.prepaid.exposure import limits_minor

    return limits_minor(config().prepaid.exposure_limit)


def _may_edit(request: Request) -> bool:
    """Whether the logged-in user may edit the prepaid DAG's runs (and so post to balances)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import (
        DagAccessEntity,
        DagDetails,
    )

    return get_auth_manager().is_authorized_dag(
        method="PUT",
        access_entity=DagAccessEntity.RUN,
        details=DagDetails(id=PREPAID_DAG_ID),
        user=request.state.user,
    )


def _operator(request: Request) -> str:
    return request.state.user.get_name()


def _csrf_parts(request: Request, account_id: str, key: str) -> tuple[str, ...]:
    return (_operator(request), "prepaid-manual-entry", account_id, key)


def _positive_int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and len(text) < 19 else None


@app.get("/prepaid", response_class=HTMLResponse)
def prepaid_page(start: str | None = None, locked: str | None = None) -> HTMLResponse:
    """Every prepaid account, a page at a time, and the latest run's exposure."""
    from cdr_billing.ui import prepaid_pages, prepaid_queries

    listing = prepaid_queries.accounts_page(
        billing_db(),
        _exposure_limits(),
        datetime.now(UTC),
        start=start[:MAX_ACCOUNT_ID] if start else None,
        locked_only=locked == "1",
    )
    return html(prepaid_pages.accounts_page(listing))


@app.get("/prepaid/outbox", response_class=HTMLResponse)
def prepaid_outbox_page(after: str | None = None) -> HTMLResponse:
    """The switch events not delivered yet, across accounts."""
    from cdr_billing.ui import prepaid_pages, prepaid_queries

    outbox = prepaid_queries.outbox_page(billing_db(), _positive_int(after))
    return html(prepaid_pages.outbox_page(outbox))


def _no_account(account_id: str) -> HTTPException:
    from cdr_billing.privacy import shown_id

    shown = account_id if len(account_id) <= MAX_ACCOUNT_ID else account_id[:40] + "…"
    return HTTPException(404, f"No prepaid account {shown_id(shown)!r}.")


def _account_in_path(request: Request, suffix: str = "") -> str:
    """The account id of the address: the raw path segment after account/ (before `suffix`),
    decoded, or unsealed when the link sealed a phone number (sealed_ids); 404 when its seal
    does not open."""
    from cdr_billing.ui.sealed_ids import segment_id

    raw = (request.scope.get("raw_path") or request.url.path.encode()).decode("latin-1")
    found = segment_id(raw.split("/prepaid/account/", 1)[-1].removesuffix(suffix))
    if found is None:
        raise HTTPException(404, "No such account: the address was not made by this Billing app.")
    return found


@app.get("/prepaid/account/{address:path}", response_class=HTMLResponse)
def prepaid_account_page(
    request: Request,
    before: str | None = None,
    entry: str | None = None,
    repeat: str | None = None,
) -> HTMLResponse:
    """One account: settings and history, ledger, locks, top-ups, deliveries, and the form."""
    from cdr_billing.ui import prepaid_pages, prepaid_queries
    from cdr_billing.ui.csrf import make_token

    account_id = _account_in_path(request)
    detail = (
        prepaid_queries.account_detail(billing_db(), account_id, _positive_int(before))
        if len(account_id) <= MAX_ACCOUNT_ID
        else None
    )
    if detail is None:
        raise _no_account(account_id)
    form = None
    if _may_edit(request):
        key = f"ui-{uuid4().hex}"
        token = make_token(secret_key(), datetime.now(UTC), *_csrf_parts(request, account_id, key))
        form = prepaid_pages.CreditForm(key, token, _operator(request))
    entry_id = _positive_int(entry)
    posted = (
        prepaid_queries.entry_of(billing_db(), account_id, entry_id)
        if entry_id is not None
        else None
    )
    return html(prepaid_pages.account_page(detail, form, posted, repeat == "1"))


async def _form_fields(request: Request) -> dict[str, str] | None:
    """The desk form's fields, or None when it is not a small urlencoded form."""
    fields = await small_form(request, MAX_FORM_BYTES, max_fields=20)
    return None if fields is None else {k: v for k, v in fields.items() if k in FORM_FIELDS}


@app.post("/prepaid/account/{address:path}/credit")
async def prepaid_manual_entry(request: Request) -> Response:
    """Record an operator's top-up or credit: once per form (its key), CSRF-checked, by the
    logged-in user who may edit the prepaid DAG's runs; then back to the account's page."""
    from cdr_billing.prepaid.accounts import AccountError
    from cdr_billing.prepaid.balances import LedgerError
    from cdr_billing.ui import prepaid_pages, prepaid_queries
    from cdr_billing.ui.csrf import token_is_valid
    from cdr_billing.ui.sealed_ids import id_segment

    account_id = _account_in_path(request, suffix="/credit")
    back = f"../{id_segment(account_id)}"

    def refused(status: int, title: str, text: str) -> HTMLResponse:
        return html(prepaid_pages.form_error_page(title, text, back), status)

    if len(account_id) > MAX_ACCOUNT_ID:
        raise _no_account(account_id)
    if not _may_edit(request):
        return refused(403, "Not allowed", "You may not post to prepaid balances.")
    fields = await _form_fields(request)
    if fields is None or any(len(fields.get(n, "")) > MAX_FIELD[n] for n in FORM_FIELDS):
        return refused(400, "Not recorded", "The form was not sent as the page made it.")
    key = fields.get("key", "")
    csrf_parts = _csrf_parts(request, account_id, key)
    if not key or not token_is_valid(
        secret_key(), fields.get("csrf_token"), datetime.now(UTC), *csrf_parts
    ):
        return refused(
            403,
            "Not recorded",
            "The form's security token is missing, expired or not yours: "
            "open the account's page again and resubmit.",
        )
    kind = fields.get("kind", "")
    if kind not in prepaid_pages.FORM_KINDS:
        return refused(400, "Not recorded", "kind: must be top-up or credit.")
    try:
        recorded = await run_in_threadpool(
            prepaid_queries.record_manual_entry,
            billing_db(),
            account_id,
            kind,
            fields.get("amount", ""),
            fields.get("reason", ""),
            _operator(request),
            key,
        )
    except prepaid_queries.UnknownAccount:
        raise _no_account(account_id) from None
    except (AccountError, LedgerError) as exc:
        return refused(400, "Not recorded", str(exc))
    again = "" if recorded.posted.new else "&repeat=1"
    return RedirectResponse(f"{back}?entry={recorded.posted.entry_id}{again}", 303)
