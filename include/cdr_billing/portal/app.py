"""The portal's routes (FastAPI): sign-in by a mailed link, the signed-in user's page, their
statements and top-ups, sign-out.

Security in one place: every page is served under a content policy that allows no script and
no framing; every POST must carry a CSRF token bound to the browser (signed out) or the
session (signed in), its purpose and its form, and must not come from another origin. The
session cookie is HttpOnly and SameSite=Lax, and Secure with the `__Host-` prefix when the
portal is reached over https. Sign-in answers the same for any address, sends the mail after
the answer (no timing difference), and is rate-limited per address and per client.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy.engine import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from cdr_billing.money import minor_digits
from cdr_billing.portal import audit, auth, limits, oidc, pages, queries
from cdr_billing.portal.topup import TopupRefused, start_topup
from cdr_billing.prepaid.gateway import GatewaySettings
from cdr_billing.ui.csrf import make_token, token_is_valid
from cdr_billing.ui.forms import small_form

log = logging.getLogger(__name__)

POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # a link's token must not leave in a Referer; same-origin, not no-referrer, under which
    # browsers send `Origin: null` with forms
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": POLICY,
}
MAX_FORM_BYTES = 4096
TOPUP_CHOICES = (10, 20, 50)  # whole currency units
SENT = "/sign-in/sent"


@dataclass(frozen=True)
class PortalSettings:
    """What the portal needs: the billing database, its own secret, the address users reach
    it at (links in mails are built from it, never from a request's Host header)."""

    engine: Engine
    secret: str = field(repr=False)
    public_url: str
    timezone: str
    archive_root: Path
    smtp_connection: str = "smtp_default"
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    oidc: oidc.OidcSettings | None = None  # sign-in through the organisation's provider

    @property
    def secure(self) -> bool:
        return self.public_url.startswith("https://")

    @property
    def origin(self) -> str:
        parts = urlsplit(self.public_url)
        return f"{parts.scheme}://{parts.netloc}"

    def cookie(self, name: str) -> str:
        """`__Host-` cookies must be Secure, for this host only, with Path=/."""
        return f"__Host-{name}" if self.secure else name


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the browser's CSRF binding, client hash and session (if any)."""

    browser: str | None
    client: str
    session: auth.Session | None


class SignedOut(Exception):  # noqa: N818 (a signal: answered by the sign-in page, not an error)
    """A page that needs a session was asked for without a live one."""


def now_utc() -> datetime:
    return datetime.now(UTC)


def month_start(now: datetime, timezone: str) -> datetime:
    """The first instant of the current month in the billing timezone."""
    local = now.astimezone(ZoneInfo(timezone))
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def topup_choices(currency: str) -> tuple[int, ...]:
    return tuple(units * 10 ** minor_digits(currency) for units in TOPUP_CHOICES)


def html(document: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(document, status, headers=HEADERS)


def create_app(settings: PortalSettings) -> FastAPI:  # noqa: C901 (the routes, each small)
    app = FastAPI(title="CDR billing portal", docs_url=None, redoc_url=None, openapi_url=None)
    session_cookie, browser_cookie = settings.cookie("cdr_portal"), settings.cookie("cdr_portal_b")
    flow_cookie = settings.cookie("cdr_portal_oidc")
    provider = (
        oidc.OidcClient(settings.oidc, settings.public_url + oidc.CALLBACK_PATH)
        if settings.oidc
        else None
    )
    organisation = settings.oidc.name if settings.oidc else None

    def caller(request: Request) -> Caller:
        client = auth.client_hash(settings.secret, request.client.host if request.client else "")
        with settings.engine.begin() as conn:
            session = auth.live_session(conn, request.cookies.get(session_cookie), now_utc())
        browser = request.cookies.get(browser_cookie)
        return Caller(browser if auth.well_formed(browser) else None, client, session)

    def binding(who: Caller) -> str:
        """What a CSRF token is bound to: the session, else the browser's cookie."""
        if who.session is not None:
            return who.session.digest
        return auth.digest(who.browser) if who.browser else ""

    def csrf(who: Caller, *parts: str) -> str:
        return make_token(settings.secret, now_utc(), binding(who), *parts)

    def csrf_ok(who: Caller, token: str | None, *parts: str) -> bool:
        return bool(binding(who)) and token_is_valid(
            settings.secret, token, now_utc(), binding(who), *parts
        )

    def form_page(request: Request, render: Callable[[Caller], str]) -> Response:
        """A signed-out page with a form: its CSRF token binds to the browser's cookie, made
        now (and set on the answer) for a browser that has none."""
        who = caller(request)
        fresh = None if who.browser else auth.new_secret().value
        if fresh:
            who = replace(who, browser=fresh)
        response = html(render(who))
        if fresh:
            response.set_cookie(
                browser_cookie,
                fresh,
                httponly=True,
                samesite="lax",
                secure=settings.secure,
                path="/",
            )
        return response

    def to_sign_in(request: Request) -> Response:
        response = RedirectResponse("/sign-in", 303)
        if request.cookies.get(session_cookie):
            response.delete_cookie(session_cookie, path="/", secure=settings.secure)
        return response

    def same_origin(request: Request) -> bool:
        """Browsers say where a POST comes from: it must be this portal."""
        origin = request.headers.get("origin")
        if origin is not None and origin != settings.origin:
            return False
        fetch_site = request.headers.get("sec-fetch-site")
        return fetch_site is None or fetch_site in ("same-origin", "none")

    async def form(request: Request) -> dict[str, str] | None:
        return await small_form(request, MAX_FORM_BYTES, max_fields=10)

    def forbidden() -> Response:
        return html(
            pages.message_page(
                "Not accepted",
                "The form was too old or not made by this site. Open the page again and retry.",
                "/",
                "Back",
            ),
            403,
        )

    async def checked_post(request: Request, who: Caller, *parts: str) -> dict[str, str] | None:
        """The form of a POST that passes the origin and CSRF checks; None otherwise."""
        if not same_origin(request):
            return None
        fields = await form(request)
        if fields is None or not csrf_ok(who, fields.get("csrf_token"), *parts):
            return None
        return fields

    @app.exception_handler(StarletteHTTPException)
    async def error_page(request: Request, error: StarletteHTTPException) -> Response:
        text = "There is no such page." if error.status_code == 404 else str(error.detail)
        return html(pages.message_page("Not found", text, "/", "Back"), error.status_code)

    @app.get("/sign-in")
    def sign_in_form(request: Request) -> Response:
        return form_page(
            request, lambda who: pages.sign_in_page(csrf(who, "sign-in"), oidc_name=organisation)
        )

    def send_link(address: str, client: str) -> None:
        """After the answer: a link for a known address, nothing for others (both audited)."""
        from cdr_billing.portal.mail import send_sign_in_link

        now = now_utc()
        with settings.engine.begin() as conn:
            known = bool(queries.accounts_of(conn, address))
            token = auth.issue_link(conn, address, client, now) if known else None
            audit.record(
                conn,
                "sign_in_requested",
                now,
                address_hash=auth.address_hash(address),
                client_hash=client,
                detail="link mailed" if known else "unknown address: nothing mailed",
            )
        if token is not None:
            send_sign_in_link(
                settings.smtp_connection, address, f"{settings.public_url}/sign-in/{token}"
            )

    @app.post("/sign-in")
    async def sign_in_request(request: Request, background: BackgroundTasks) -> Response:
        who = await run_in_threadpool(caller, request)
        fields = await checked_post(request, who, "sign-in")
        if fields is None:
            return forbidden()
        address = auth.normal_address(fields.get("address", ""))
        if address is None:
            return html(
                pages.sign_in_page(
                    csrf(who, "sign-in"), "That is not an email address.", organisation
                ),
                400,
            )

        def within_limits() -> bool:
            now = now_utc()
            with settings.engine.begin() as conn:
                return limits.allow(
                    conn, limits.SIGN_INS_PER_CLIENT, who.client, now
                ) and limits.allow(conn, limits.LINKS_PER_ADDRESS, auth.address_hash(address), now)

        if not await run_in_threadpool(within_limits):
            return html(
                pages.message_page(
                    "Too many requests",
                    "Too many sign-in links were asked for. Wait 15 minutes, then try again.",
                ),
                429,
            )
        background.add_task(send_link, address, who.client)
        return RedirectResponse(SENT, 303)

    @app.get(SENT)
    def link_sent() -> Response:
        return html(pages.link_sent_page())

    def set_session(response: Response, cookie: str) -> None:
        response.set_cookie(
            session_cookie, cookie, httponly=True, samesite="lax", secure=settings.secure, path="/"
        )

    def oidc_refused() -> Response:
        """One answer for every refused OIDC sign-in, whatever the reason (audited): an
        address unknown here is not told from a bad token (no enumeration)."""
        return html(
            pages.message_page(
                "Not signed in",
                f"Signing in with {organisation} did not work: it took longer than 10 minutes, "
                "was started in another browser, or your address has no phone lines here. "
                "Start again, or ask for a link by mail.",
                "/sign-in",
                "Back to sign-in",
            ),
            400,
        )

    def open_session(conn: Connection, who: Caller, address: str, now: datetime, how: str) -> str:
        """A new session for the address (the caller's old one ended), audited: its cookie."""
        cookie = auth.start_session(conn, address, now, who.session.digest if who.session else None)
        audit.record(
            conn,
            "sign_in",
            now,
            address_hash=auth.address_hash(address),
            client_hash=who.client,
            detail=how,
        )
        return cookie

    if provider is not None:

        @app.get(oidc.START_PATH)
        def oidc_start(request: Request) -> Response:
            """To the provider, with a new flow in the browser's cookie. A GET (a link, not a
            form): the content policy's form-action 'self' would stop a form's redirect to
            the provider, and starting a flow signs no one in."""
            who = caller(request)
            with settings.engine.begin() as conn:
                allowed = limits.allow(conn, limits.SIGN_INS_PER_CLIENT, who.client, now_utc())
            if not allowed:
                return html(
                    pages.message_page("Too many requests", "Wait 15 minutes, then try again."),
                    429,
                )
            flow = oidc.new_flow(now_utc())
            try:
                target = provider.authorization_url(flow)
            except oidc.OidcRefused as refused:
                log.warning("OIDC provider not usable: %s", refused)
                return html(
                    pages.message_page(
                        "Not available",
                        f"{organisation} cannot be reached just now. Ask for a link by mail.",
                    ),
                    502,
                )
            response = RedirectResponse(target, 303)
            response.set_cookie(
                flow_cookie,
                oidc.flow_cookie(settings.secret, flow),
                max_age=int(oidc.FLOW_LIFETIME.total_seconds()),
                httponly=True,
                samesite="lax",  # sent on the provider's redirect back (a top-level GET)
                secure=settings.secure,
                path="/",
            )
            return response

        @app.get(oidc.CALLBACK_PATH)
        def oidc_callback(request: Request) -> Response:
            who = caller(request)
            now = now_utc()
            flow = oidc.flow_of_cookie(settings.secret, request.cookies.get(flow_cookie), now)
            params = request.query_params
            with settings.engine.begin() as conn:
                allowed = limits.allow(conn, limits.OIDC_CALLBACKS_PER_CLIENT, who.client, now)
                first_use = (
                    allowed
                    and flow is not None
                    and limits.allow(conn, limits.OIDC_STATE_ONCE, auth.digest(flow.state), now)
                )
            if not allowed:
                return html(
                    pages.message_page("Too many requests", "Wait a minute, then try again."), 429
                )
            try:
                address = oidc_address(flow, first_use, params)
                session = sign_in_by_oidc(who, address, now)
            except oidc.OidcRefused as refused:
                with settings.engine.begin() as conn:
                    audit.record(
                        conn,
                        "sign_in_refused",
                        now,
                        address_hash=refused.address_hash,
                        client_hash=who.client,
                        detail=f"oidc: {refused}",
                    )
                response = oidc_refused()
            else:
                response = RedirectResponse("/", 303)
                set_session(response, session)
            response.delete_cookie(flow_cookie, path="/", secure=settings.secure)
            return response

        def oidc_address(flow: oidc.Flow | None, first_use: bool, params: Mapping[str, str]) -> str:
            """The verified address of the callback's code, if the flow is this browser's."""
            state = params.get("state")
            if flow is None:
                raise oidc.OidcRefused("no flow cookie (another browser, or older than 10 min)")
            if not state or not hmac.compare_digest(state.encode(), flow.state.encode()):
                raise oidc.OidcRefused("state is not the browser's")
            if not first_use:
                raise oidc.OidcRefused("state used before")
            if params.get("iss") not in (None, settings.oidc.issuer):  # RFC 9207: mix-up
                raise oidc.OidcRefused("the answer is from another issuer")
            if params.get("error"):
                raise oidc.OidcRefused(f"provider answered {params['error'][:60]}")
            code = params.get("code")
            if not code or len(code) > 2048:
                raise oidc.OidcRefused("no code")
            email = provider.verified_email(provider.exchange(code, flow.verifier), flow.nonce)
            address = auth.normal_address(email) if email else None
            if address is None:
                raise oidc.OidcRefused("no verified email")
            return address

        def sign_in_by_oidc(who: Caller, address: str, now: datetime) -> str:
            """The same session as a link's, for an address of the latest snapshot."""
            with settings.engine.begin() as conn:
                if not queries.accounts_of(conn, address):
                    raise oidc.OidcRefused(
                        "address not in the latest snapshot", auth.address_hash(address)
                    )
                return open_session(conn, who, address, now, "oidc")

    @app.get("/sign-in/{token}")
    def confirm_form(request: Request, token: str) -> Response:
        if not auth.well_formed(token):
            return html(refused_link(), 400)
        return form_page(request, lambda who: pages.confirm_page(token, csrf(who, "confirm")))

    def refused_link() -> str:
        return pages.message_page(
            "Link not valid",
            "This sign-in link is not valid: it was used already, is older than 15 minutes, "
            "or is not complete. Ask for a new one.",
            "/sign-in",
            "Get a new link",
        )

    @app.post("/sign-in/confirm")
    async def confirm(request: Request) -> Response:
        who = await run_in_threadpool(caller, request)
        fields = await checked_post(request, who, "confirm")
        if fields is None:
            return forbidden()

        def redeem() -> str | None | bool:
            now = now_utc()
            with settings.engine.begin() as conn:
                if not limits.allow(conn, limits.REDEMPTIONS_PER_CLIENT, who.client, now):
                    return False
                address = auth.redeem_link(conn, fields.get("token", ""), now)
                if address is None:
                    audit.record(
                        conn,
                        "sign_in_refused",
                        now,
                        client_hash=who.client,
                        detail="link unknown, used or expired",
                    )
                    return None
                return open_session(conn, who, address, now, "one-time link")

        cookie = await run_in_threadpool(redeem)
        if cookie is False:
            return html(
                pages.message_page("Too many requests", "Wait a minute, then try again."), 429
            )
        if cookie is None:
            return html(refused_link(), 400)
        response = RedirectResponse("/", 303)
        set_session(response, cookie)
        return response

    @app.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        who = await run_in_threadpool(caller, request)
        if who.session is None:
            return to_sign_in(request)
        if await checked_post(request, who, "sign-out") is None:
            return forbidden()

        def end() -> None:
            now = now_utc()
            with settings.engine.begin() as conn:
                auth.end_session(conn, who.session.digest, now)
                audit.record(
                    conn,
                    "sign_out",
                    now,
                    address_hash=auth.address_hash(who.session.address),
                    client_hash=who.client,
                )

        await run_in_threadpool(end)
        response = RedirectResponse("/sign-in", 303)
        response.delete_cookie(session_cookie, path="/", secure=settings.secure)
        return response

    @app.get("/")
    def home(request: Request) -> Response:
        who = caller(request)
        if who.session is None:
            return to_sign_in(request)
        now = now_utc()
        with settings.engine.connect() as conn:
            view = queries.overview(
                conn, settings.secret, who.session.address, month_start(now, settings.timezone)
            )
        forms = {}
        for line in view.lines:
            if line.can_top_up:
                key = uuid.uuid4().hex
                forms[line.ref] = pages.TopupForm(
                    line, key, csrf(who, "topup", line.ref, key), topup_choices(line.currency)
                )
        return html(pages.overview_page(view, forms, settings.timezone, csrf(who, "sign-out")))

    def signed_in(request: Request) -> Caller:
        who = caller(request)
        if who.session is None:
            raise SignedOut
        return who

    @app.exception_handler(SignedOut)
    async def signed_out(request: Request, error: SignedOut) -> Response:
        return to_sign_in(request)

    def statement_file(request: Request, statement_id: str, kind: str) -> Response:
        who = signed_in(request)
        with settings.engine.begin() as conn:
            found = queries.statement_of(conn, who.session.address, statement_id)
            path = (
                queries.document_path(found[f"{kind}_path"], settings.archive_root)
                if found
                else None
            )
            if path is None:
                raise StarletteHTTPException(404)
            audit.record(
                conn,
                "statement_read",
                now_utc(),
                address_hash=auth.address_hash(who.session.address),
                client_hash=who.client,
                account_id=found["user_id"],
                detail=f"{kind} {statement_id} ({found['billing_month']})",
            )
        if kind == "pdf":
            return FileResponse(
                path,
                media_type="application/pdf",
                headers=HEADERS,
                filename=f"statement-{found['billing_month']}.pdf",
            )
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=HEADERS)

    @app.get("/statements/{statement_id}.pdf")
    def statement_pdf(request: Request, statement_id: str) -> Response:
        return statement_file(request, statement_id, "pdf")

    @app.get("/statements/{statement_id}")
    def statement_html(request: Request, statement_id: str) -> Response:
        return statement_file(request, statement_id, "html")

    @app.get("/topups/{request_id}")
    def topup_status(request: Request, request_id: str) -> Response:
        who = signed_in(request)
        if not request_id.isdigit() or len(request_id) > 18:
            raise StarletteHTTPException(404)
        with settings.engine.connect() as conn:
            accounts = queries.accounts_of(conn, who.session.address)
            found = queries.topup_of(conn, accounts, int(request_id))
        if found is None:
            raise StarletteHTTPException(404)
        return html(
            pages.topup_page(found, settings.timezone, who.session.address, csrf(who, "sign-out"))
        )

    @app.post("/accounts/{ref}/topup")
    async def topup(request: Request, ref: str) -> Response:
        who = await run_in_threadpool(caller, request)
        if who.session is None:
            return to_sign_in(request)
        if not same_origin(request):
            return forbidden()
        fields = await form(request)
        key = (fields or {}).get("key", "")
        if fields is None or not csrf_ok(who, fields.get("csrf_token"), "topup", ref, key):
            return forbidden()
        address = who.session.address

        def line_of_ref() -> queries.Line | None:
            with settings.engine.connect() as conn:
                lines = queries.lines_of(conn, settings.secret, queries.accounts_of(conn, address))
            return next((line for line in lines if line.ref == ref), None)

        line = await run_in_threadpool(line_of_ref)
        if line is None:
            raise StarletteHTTPException(404)
        amount = fields.get("amount", "")
        if not amount.isdigit() or int(amount) not in topup_choices(line.currency):
            return html(
                pages.message_page("Not accepted", "Pick one of the amounts.", "/", "Back"), 400
            )
        try:
            started = await run_in_threadpool(
                start_topup,
                settings.engine,
                settings.gateway,
                line.account_id,
                int(amount),
                key,
                address,
                who.client,
            )
        except TopupRefused as refused:
            return html(pages.message_page("No top-up", str(refused), "/", "Back"), 409)
        return RedirectResponse(f"/topups/{started}", 303)

    return app
