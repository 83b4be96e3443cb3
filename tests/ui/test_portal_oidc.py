"""Sign-in through the organisation's OpenID Connect provider, against the served portal and
the devkit's real provider (cdr_devkit.oidc_provider, its own process on loopback), followed
with httpx as a browser would: the provider's misbehaviours, replayed codes, states of another
browser and tampered flow cookies are refused with no session; one run in headless Chromium.
The pure rules (PKCE, client credentials, flow cookies, the verified address) at the end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from portal_world import ALICE, ALICE_PAYS, BOB, BOB_LINE, NOBODY, csrf_of, running_portal, sign_in
from sqlalchemy import delete, select

from cdr_billing.portal import auth, oidc
from cdr_billing.schema import portal_audit, portal_rate_event, portal_session
from cdr_devkit.portal_browser import HOME_TITLE, loaded, open_page
from cdr_devkit.screenshot import blank_tab

FLOW_COOKIE = "cdr_portal_oidc"
REFUSED = "Signing in with Example University did not work"


@pytest.fixture(scope="module")
def world(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("portal_oidc")
    with running_portal(postgres, folder, "portal_oidc", oidc=True) as w:
        yield w


@pytest.fixture(autouse=True)
def fresh(world):
    """Each test: no requests counted, the provider signing Alice in and behaving."""
    with world.engine.begin() as conn:
        conn.execute(delete(portal_rate_event))
    world.oidc.control(user=ALICE, email_verified=True, misbehave="", reuse_codes=False)


def _to_callback(client: httpx.Client) -> str:
    """Press "Sign in with ..." and let the provider answer: the callback's path and query
    (the provider signs its configured user in at once)."""
    page = client.get("/sign-in")
    assert 'href="/sign-in/oidc"' in page.text and "Sign in with Example University" in page.text
    started = client.get("/sign-in/oidc")
    assert started.status_code == 303 and FLOW_COOKIE in client.cookies
    query = parse_qs(urlsplit(started.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["scope"] == ["openid email"]
    at_provider = client.get(started.headers["location"])
    assert at_provider.status_code == 302, at_provider.text
    back = at_provider.headers["location"]
    assert back.startswith(f"{client.base_url}".rstrip("/") + oidc.CALLBACK_PATH)
    return back.removeprefix(str(client.base_url).rstrip("/"))


def _refusals(world, since: datetime) -> list[str]:
    with world.engine.connect() as conn:
        return list(
            conn.execute(
                select(portal_audit.c.detail).where(
                    portal_audit.c.event == "sign_in_refused", portal_audit.c.at >= since
                )
            ).scalars()
        )


def _assert_refused(world, client: httpx.Client, answer: httpx.Response, reason: str, since):
    assert answer.status_code == 400 and REFUSED in answer.text
    assert "cdr_portal=" not in answer.headers.get("set-cookie", "")
    assert FLOW_COOKIE not in client.cookies  # the flow is over either way
    home = client.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/sign-in"
    refusals = _refusals(world, since)
    assert any(reason in (detail or "") for detail in refusals), refusals


def test_sign_in_through_the_provider_shows_only_the_users_data(world):
    with world.client() as client:
        sign_in(world, client, BOB)  # signed in by a link first: the session is replaced
        bob_cookie = client.cookies["cdr_portal"]
        done = client.get(_to_callback(client))
        assert done.status_code == 303 and done.headers["location"] == "/"
        cookie = done.headers["set-cookie"]
        assert (
            cookie.startswith("cdr_portal=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
        )
        assert FLOW_COOKIE not in client.cookies and client.cookies["cdr_portal"] != bob_cookie
        home = client.get("/")
    assert home.status_code == 200 and ALICE in home.text and ALICE_PAYS in home.text
    assert BOB_LINE not in home.text and BOB not in home.text
    with world.engine.connect() as conn:
        old = conn.execute(
            select(portal_session.c.revoked_at).where(
                portal_session.c.session_hash == auth.digest(bob_cookie)
            )
        ).scalar_one()
        detail = conn.execute(
            select(portal_audit.c.detail)
            .where(portal_audit.c.event == "sign_in")
            .where(portal_audit.c.address_hash == auth.address_hash(ALICE))
            .order_by(portal_audit.c.event_id.desc())
        ).first()
    assert old is not None and detail.detail == "oidc"
    counts = world.oidc.status()["counts"]
    assert counts["auth_methods"].get("client_secret_basic", 0) >= 1  # the secret, by basic
    assert "invalid_grant (PKCE)" not in counts["refused"]


@pytest.mark.parametrize(
    ("misbehave", "reason"),
    [
        ("wrong_audience", "InvalidAudienceError"),
        ("extra_audience", "azp is not this client"),
        ("wrong_issuer", "InvalidIssuerError"),
        ("bad_signature", "InvalidSignatureError"),
        ("unknown_key", "not in the provider's JWKS"),
        ("expired", "ExpiredSignatureError"),
        ("missing_nonce", 'MissingRequiredClaimError: Token is missing the "nonce" claim'),
        ("wrong_nonce", "wrong nonce"),
        ("alg_none", "alg none is not RS256"),
        ("hs256_public_key", "alg HS256 is not RS256"),
    ],
)
def test_a_misbehaving_provider_signs_no_one_in(world, misbehave, reason):
    world.oidc.control(misbehave=misbehave)
    since = datetime.now(UTC)
    with world.client() as client:
        answer = client.get(_to_callback(client))
        _assert_refused(world, client, answer, reason, since)


def test_unverified_and_unknown_addresses_get_one_neutral_answer(world):
    since = datetime.now(UTC)
    answers = []
    for user, verified in ((ALICE, False), (NOBODY, True)):
        world.oidc.control(user=user, email_verified=verified)
        with world.client() as client:
            answer = client.get(_to_callback(client))
            answers.append((answer.status_code, answer.text))
            _assert_refused(world, client, answer, "oidc", since)
    world.oidc.control(user=ALICE, misbehave="bad_signature")
    with world.client() as client:
        forged = client.get(_to_callback(client))
    assert answers[0] == answers[1] == (forged.status_code, forged.text)  # no enumeration
    with world.engine.connect() as conn:
        rows = conn.execute(
            select(portal_audit.c.detail, portal_audit.c.address_hash).where(
                portal_audit.c.event == "sign_in_refused", portal_audit.c.at >= since
            )
        ).all()
    assert ("oidc: no verified email", None) in rows
    assert ("oidc: address not in the latest snapshot", auth.address_hash(NOBODY)) in rows


def test_a_replayed_callback_or_code_is_refused(world):
    world.oidc.control(reuse_codes=True)  # a lax provider: the portal must refuse on its own
    with world.client() as client:
        callback = _to_callback(client)
        flow = client.cookies[FLOW_COOKIE]
        assert client.get(callback).status_code == 303
    tokens = world.oidc.status()["counts"]["tokens"]
    since = datetime.now(UTC)
    with world.client() as replayer:  # the same callback, cookie and all
        replayer.cookies.set(FLOW_COOKIE, flow, domain="127.0.0.1")
        _assert_refused(world, replayer, replayer.get(callback), "state used before", since)
    assert world.oidc.status()["counts"]["tokens"] == tokens  # not even sent to the provider

    world.oidc.control(reuse_codes=False)
    old_code = parse_qs(urlsplit(callback).query)["code"][0]
    with world.client() as client:
        fresh = parse_qs(urlsplit(_to_callback(client)).query)
        replay = f"{oidc.CALLBACK_PATH}?{urlencode({'code': old_code, 'state': fresh['state'][0]})}"
        _assert_refused(world, client, client.get(replay), "invalid_grant", since)


def test_a_callback_in_another_browser_or_with_another_state_is_refused(world):
    since = datetime.now(UTC)
    with world.client() as victim, world.client() as attacker:
        callback = _to_callback(attacker)  # the attacker's own code and state...
        answer = victim.get(callback)  # ...opened in the victim's browser (login CSRF)
        _assert_refused(world, victim, answer, "no flow cookie", since)
        _to_callback(victim)  # the victim has a flow of their own now: states differ
        _assert_refused(world, victim, victim.get(callback), "state is not the browser's", since)
    with world.client() as client:
        callback = _to_callback(client)
        query = parse_qs(urlsplit(callback).query)
        no_state = f"{oidc.CALLBACK_PATH}?{urlencode({'code': query['code'][0]})}"
        _assert_refused(world, client, client.get(no_state), "state is not the browser's", since)


def test_forged_tampered_and_old_flow_cookies_are_refused(world):
    since = datetime.now(UTC)
    old = oidc.Flow("s" * 43, "n" * 43, "v" * 64, int((datetime.now(UTC)).timestamp()) - 660)
    for value in (
        oidc.flow_cookie("another secret of at least 32 characters!", old),
        oidc.flow_cookie(world.secret, old),  # ours, but 11 minutes old
    ):
        with world.client() as client:
            client.cookies.set(FLOW_COOKIE, value, domain="127.0.0.1")
            query = urlencode({"code": "x", "state": old.state})
            answer = client.get(f"{oidc.CALLBACK_PATH}?{query}")
            _assert_refused(world, client, answer, "no flow cookie", since)
    with world.client() as client:
        callback = _to_callback(client)
        body, signature = client.cookies[FLOW_COOKIE].split(".")
        client.cookies.set(FLOW_COOKIE, f"{body[:-2]}AA.{signature}", domain="127.0.0.1")
        _assert_refused(world, client, client.get(callback), "no flow cookie", since)


def test_a_provider_error_or_another_issuer_is_refused(world):
    since = datetime.now(UTC)
    with world.client() as client:
        state = parse_qs(urlsplit(_to_callback(client)).query)["state"][0]
        query = urlencode({"error": "access_denied", "state": state})
        answer = client.get(f"{oidc.CALLBACK_PATH}?{query}")
        _assert_refused(world, client, answer, "provider answered access_denied", since)
    with world.client() as client:  # an answer naming another issuer (RFC 9207 mix-up)
        callback = _to_callback(client).replace("iss=http", "iss=https")
        _assert_refused(world, client, client.get(callback), "from another issuer", since)


def test_callbacks_are_rate_limited_per_client(world):
    with world.client() as client:
        codes = [client.get(f"{oidc.CALLBACK_PATH}?state=x&code=y").status_code for _ in range(11)]
    assert codes == [400] * 10 + [429]


def test_csrf_is_unaffected(world):
    with world.client() as client:
        client.get("/sign-in")
        assert client.post("/sign-in", data={"address": ALICE}).status_code == 403
        assert client.get(_to_callback(client)).status_code == 303
        home = client.get("/")
        assert client.post("/sign-out", data={}).status_code == 403
        evil = {"origin": "https://evil.example"}
        token = csrf_of(home.text)
        assert client.post("/sign-out", data={"csrf_token": token}, headers=evil).status_code == 403
        assert client.get("/").status_code == 200
        assert client.post("/sign-out", data={"csrf_token": token}).status_code == 303
        assert client.get("/").status_code == 303


def test_the_button_in_a_browser(world, browser):
    session = blank_tab(browser)
    open_page(browser, session, f"{world.url}/sign-in", "Sign in")
    browser.evaluate(
        session, "document.leftByTest = true; document.querySelector('a.button').click()"
    )
    loaded(browser, session, HOME_TITLE)
    text = browser.evaluate(session, "document.body.innerText")
    assert ALICE in text and ALICE_PAYS in text and BOB_LINE not in text


# The pure rules.


def test_pkce_challenge_is_rfc_7636s_example():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert oidc.code_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_only_https_or_loopback_http():
    assert oidc.allowed_url("https://idp.example.org/realms/x")
    assert oidc.allowed_url("http://127.0.0.1:8080") and oidc.allowed_url("http://[::1]:1")
    assert not oidc.allowed_url("http://idp.example.org")
    assert not oidc.allowed_url("http://127.0.0.1.evil.example")
    assert not oidc.allowed_url("ftp://127.0.0.1/") and not oidc.allowed_url("https:///x")


def test_client_credentials_and_method():
    assert oidc.basic_credentials("a b", "p+/:") == "Basic YSUyMGI6cCUyQiUyRiUzQQ=="
    assert oidc.chosen_auth_method(None, None) == "client_secret_basic"
    assert oidc.chosen_auth_method(None, ["client_secret_post"]) == "client_secret_post"
    with pytest.raises(oidc.OidcRefused):
        oidc.chosen_auth_method(None, ["private_key_jwt"])


def test_only_a_verified_email_is_an_address():
    assert oidc.verified_email({"email": "a@b.c", "email_verified": True}) == "a@b.c"
    for verified in (False, "true", 1, None):
        assert oidc.verified_email({"email": "a@b.c", "email_verified": verified}) is None
    assert oidc.verified_email({"email_verified": True}) is None


def test_flow_cookies_round_trip_and_expire():
    now = datetime.now(UTC)
    flow = oidc.new_flow(now)
    value = oidc.flow_cookie("k" * 32, flow)
    assert oidc.flow_of_cookie("k" * 32, value, now) == flow
    assert oidc.flow_of_cookie("j" * 32, value, now) is None
    assert oidc.flow_of_cookie("k" * 32, value, now + timedelta(minutes=11)) is None
    assert oidc.flow_of_cookie("k" * 32, value + "x", now) is None


def test_an_http_issuer_elsewhere_than_loopback_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_CDR_PORTAL_OIDC",
        '{"conn_type": "http", "host": "http://idp.example.org", "login": "c", "password": "s"}',
    )
    with pytest.raises(oidc.OidcConfigError, match="https"):
        oidc.settings_from_connection()
    monkeypatch.delenv("AIRFLOW_CONN_CDR_PORTAL_OIDC")
    assert oidc.settings_from_connection() is None  # off by default


def test_under_tls_the_flow_cookie_is_secure_and_host_prefixed(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("portal_oidc_tls")
    with running_portal(postgres, folder, "portal_oidc_tls", tls=True, oidc=True) as w:
        with w.client() as client:
            started = client.get("/sign-in/oidc")
            flow = started.headers["set-cookie"]
            assert flow.startswith("__Host-cdr_portal_oidc=")
            assert all(flag in flow for flag in ("Secure", "HttpOnly", "SameSite=lax", "Path=/"))
            back = client.get(started.headers["location"]).headers["location"]
            assert back.startswith(f"{w.url}{oidc.CALLBACK_PATH}?")
            done = client.get(back.removeprefix(w.url))
            assert done.status_code == 303 and "__Host-cdr_portal=" in done.headers["set-cookie"]
            assert ALICE_PAYS in client.get("/").text
