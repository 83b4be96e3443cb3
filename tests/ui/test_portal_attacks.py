"""The portal under attack, over HTTP against the real served portal (httpx): other users' ids
in every URL, expired, replayed and tampered sign-in links, forged cookies, missing and wrong
CSRF tokens, another origin, account enumeration, rate limits; the audit log and the cookies'
flags (Secure and __Host- under TLS)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from portal_world import (
    ALICE,
    ALICE_PAYS,
    BOB,
    BOB_LINE,
    NOBODY,
    csrf_of,
    running_portal,
    sign_in,
)
from sqlalchemy import delete, func, select, update

from cdr_billing.portal import auth
from cdr_billing.portal.queries import account_ref
from cdr_billing.schema import portal_audit, portal_rate_event, portal_sign_in_token
from cdr_devkit.portal import mailed_links, wait_for_link


@pytest.fixture(scope="module")
def world(postgres, tmp_path_factory):
    with running_portal(postgres, tmp_path_factory.mktemp("portal"), "portal_attacks") as w:
        yield w


@pytest.fixture(autouse=True)
def fresh_limits(world):
    """Each test starts with no requests counted (they all sign the same users in)."""
    with world.engine.begin() as conn:
        conn.execute(delete(portal_rate_event))


@pytest.fixture
def alice(world):
    with world.client() as client:
        sign_in(world, client, ALICE)
        yield client


def _link_token(world, address: str) -> str:
    """Ask for a link (a fresh client) and return the token mailed."""
    with world.client() as client:
        known = len(mailed_links(world.maildir, address))
        form = client.get("/sign-in")
        client.post("/sign-in", data={"csrf_token": csrf_of(form.text), "address": address})
        return wait_for_link(world.maildir, address, known).rsplit("/", 1)[1]


def _redeem(world, token: str) -> httpx.Response:
    with world.client() as client:
        page = client.get(f"/sign-in/{token}")
        return client.post(
            "/sign-in/confirm", data={"csrf_token": csrf_of(page.text), "token": token}
        )


def test_another_users_ids_in_every_url_are_not_found(world, alice):
    assert alice.get("/").status_code == 200
    own = world.statements["alice"]
    assert alice.get(f"/statements/{own}").status_code == 200
    assert alice.get(f"/statements/{own}.pdf").headers["content-type"] == "application/pdf"
    bob_ref = account_ref(world.secret, BOB_LINE)
    for path in (
        f"/statements/{world.statements['bob']}",
        f"/statements/{world.statements['bob']}.pdf",
        f"/statements/{world.statements['alice_superseded']}",  # hers, but superseded
        f"/topups/{world.bob_topup}",
        "/statements/..%2F..%2Fetc%2Fpasswd",
    ):
        answer = alice.get(path)
        assert answer.status_code == 404, path
        assert "4321" not in answer.text and "Bob" not in answer.text
    home = alice.get("/")
    key = re.search(r'name="key" value="([0-9a-f]{32})"', home.text).group(1)
    for ref in (bob_ref, BOB_LINE, account_ref(world.secret, "unknown")):
        # a form of hers, posted to another line: the token binds the line, so 403 first
        assert (
            alice.post(
                f"/accounts/{ref}/topup",
                data={"csrf_token": csrf_of(home.text), "key": key, "amount": "1000"},
            ).status_code
            == 403
        )
    assert BOB_LINE not in home.text and BOB not in home.text


def test_a_forged_token_for_another_users_line_is_not_found(world, alice):
    """Even with a CSRF token made for that line (as if the secret leaked), Bob's line is not
    Alice's: 404, and nothing is charged."""
    from cdr_billing.ui.csrf import make_token

    charges = len(world.gateway.charges())
    session = auth.digest(alice.cookies["cdr_portal"])
    ref, key = account_ref(world.secret, BOB_LINE), "f" * 32
    token = make_token(world.secret, datetime.now(UTC), session, "topup", ref, key)
    answer = alice.post(
        f"/accounts/{ref}/topup", data={"csrf_token": token, "key": key, "amount": "1000"}
    )
    assert answer.status_code == 404
    assert len(world.gateway.charges()) == charges


def test_expired_replayed_and_tampered_links_are_refused(world):
    token = _link_token(world, ALICE)
    first = _redeem(world, token)
    assert first.status_code == 303 and "cdr_portal=" in first.headers["set-cookie"]
    replayed = _redeem(world, token)
    assert replayed.status_code == 400 and "not valid" in replayed.text
    tampered = _redeem(world, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert tampered.status_code == 400
    expired = _link_token(world, ALICE)
    with world.engine.begin() as conn:
        conn.execute(
            update(portal_sign_in_token)
            .where(portal_sign_in_token.c.token_hash == auth.digest(expired))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    answer = _redeem(world, expired)
    assert answer.status_code == 400 and "set-cookie" not in answer.headers
    with world.engine.connect() as conn:  # stored hashed only
        stored = conn.execute(select(portal_sign_in_token.c.token_hash)).scalars().all()
    assert auth.digest(token) in stored and token not in stored


def test_a_link_is_redeemed_once_by_a_post_never_by_a_get(world):
    token = _link_token(world, ALICE)
    with world.client() as scanner:  # a mail scanner opens the link twice
        assert scanner.get(f"/sign-in/{token}").status_code == 200
        assert scanner.get(f"/sign-in/{token}").status_code == 200
        assert "cdr_portal" not in scanner.cookies
    assert _redeem(world, token).status_code == 303


def test_forged_or_unknown_session_cookies_are_signed_out(world, alice):
    real = alice.cookies["cdr_portal"]
    for forged in ("x" * 43, real[:-1] + ("A" if real[-1] != "A" else "B"), "", "not a cookie!"):
        with world.client() as client:
            client.cookies.set("cdr_portal", forged)
            answer = client.get("/")
            assert answer.status_code == 303 and answer.headers["location"] == "/sign-in"
            assert client.get(f"/statements/{world.statements['alice']}").status_code == 303


def test_posts_without_or_with_a_wrong_csrf_token_or_from_elsewhere_are_forbidden(world, alice):
    home = alice.get("/")
    token = csrf_of(home.text)  # the sign-out form's
    assert alice.post("/sign-out", data={}).status_code == 403
    assert alice.post("/sign-out", data={"csrf_token": token + "0"}).status_code == 403
    evil = {"origin": "https://evil.example"}
    assert alice.post("/sign-out", data={"csrf_token": token}, headers=evil).status_code == 403
    cross = {"sec-fetch-site": "cross-site"}
    assert alice.post("/sign-out", data={"csrf_token": token}, headers=cross).status_code == 403
    key = re.search(r'name="key" value="([0-9a-f]{32})"', home.text).group(1)
    ref = account_ref(world.secret, ALICE_PAYS)
    charges = len(world.gateway.charges())
    for fields in (
        {"key": key, "amount": "1000"},
        {"key": key, "amount": "1000", "csrf_token": token},
    ):
        assert alice.post(f"/accounts/{ref}/topup", data=fields).status_code == 403
    assert len(world.gateway.charges()) == charges
    with world.client() as stranger:  # signed out, no browser cookie: no token can match
        assert stranger.post("/sign-in", data={"address": ALICE}).status_code == 403
    assert alice.get("/").status_code == 200  # still signed in
    signed_out = alice.post("/sign-out", data={"csrf_token": token})
    assert signed_out.status_code == 303 and alice.get("/").status_code == 303


def test_known_and_unknown_addresses_get_the_same_answer(world):
    answers = []
    for address in (BOB, NOBODY):
        with world.client() as client:
            form = client.get("/sign-in")
            posted = client.post(
                "/sign-in", data={"csrf_token": csrf_of(form.text), "address": address}
            )
            answers.append((posted.status_code, posted.headers["location"], posted.text))
            shown = client.get(posted.headers["location"])
            answers.append((shown.status_code, shown.text))
    assert answers[0] == answers[2] and answers[1] == answers[3]
    wait_for_link(world.maildir, BOB)
    assert mailed_links(world.maildir, NOBODY) == []


def test_sign_in_requests_are_rate_limited_per_address(world):
    address = "limited@example.org"
    with world.client() as client:
        form = csrf_of(client.get("/sign-in").text)
        codes = [
            client.post("/sign-in", data={"csrf_token": form, "address": address}).status_code
            for _ in range(6)
        ]
    assert codes == [303] * 5 + [429]
    with world.engine.connect() as conn:
        counted = conn.execute(
            select(func.count()).where(
                portal_rate_event.c.bucket == f"link-address:{auth.address_hash(address)}"
            )
        ).scalar_one()
    assert counted == 5


def test_sign_in_requests_are_rate_limited_per_client(world):
    with world.client() as client:
        form = csrf_of(client.get("/sign-in").text)
        codes = [
            client.post(
                "/sign-in", data={"csrf_token": form, "address": f"u{n}@example.org"}
            ).status_code
            for n in range(21)
        ]
    assert codes == [303] * 20 + [429]
    with world.client() as another:  # another visitor is not held back
        form = csrf_of(another.get("/sign-in").text)
        assert (
            another.post("/sign-in", data={"csrf_token": form, "address": NOBODY}).status_code
            == 303
        )


def test_the_audit_log_has_sign_ins_reads_and_sign_outs(world):
    with world.client() as client:
        sign_in(world, client, BOB)
        client.get(f"/statements/{world.statements['bob']}")
        client.post("/sign-out", data={"csrf_token": csrf_of(client.get("/").text)})
    with world.engine.connect() as conn:
        events = conn.execute(
            select(portal_audit.c.event, portal_audit.c.detail).where(
                portal_audit.c.address_hash == auth.address_hash(BOB)
            )
        ).all()
    kinds = [event for event, _ in events]
    assert {"sign_in_requested", "sign_in", "statement_read", "sign_out"} <= set(kinds)
    assert not any(BOB in (detail or "") for _, detail in events)  # hashed, never in clear


def test_session_cookie_is_httponly_and_samesite_over_http(world):
    with world.client() as client:
        form = client.get("/sign-in")
        browser = form.headers["set-cookie"]
        assert "HttpOnly" in browser and "SameSite=lax" in browser and "Secure" not in browser
        token = _link_token(world, ALICE)
        page = client.get(f"/sign-in/{token}")
        done = client.post(
            "/sign-in/confirm", data={"csrf_token": csrf_of(page.text), "token": token}
        )
    cookie = done.headers["set-cookie"]
    assert cookie.startswith("cdr_portal=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert page.headers["referrer-policy"] == "same-origin"
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none'


def test_under_tls_cookies_are_secure_and_host_prefixed(postgres, tmp_path_factory):
    with running_portal(postgres, tmp_path_factory.mktemp("tls"), "portal_tls", tls=True) as w:
        assert w.url.startswith("https://")
        with w.client() as client:
            form = client.get("/sign-in")
            assert form.headers["set-cookie"].startswith("__Host-cdr_portal_b=")
            assert "Secure" in form.headers["set-cookie"]
            client.post("/sign-in", data={"csrf_token": csrf_of(form.text), "address": ALICE})
            link = wait_for_link(w.maildir, ALICE)
            assert link.startswith(w.url + "/sign-in/")
            page = client.get(link.removeprefix(w.url))
            token = link.rsplit("/", 1)[1]
            done = client.post(
                "/sign-in/confirm", data={"csrf_token": csrf_of(page.text), "token": token}
            )
            cookie = done.headers["set-cookie"]
            assert cookie.startswith("__Host-cdr_portal=")
            assert all(flag in cookie for flag in ("Secure", "HttpOnly", "SameSite=lax", "Path=/"))
            assert client.get("/").status_code == 200


def test_without_its_connection_there_is_no_sign_in_through_a_provider(world):
    """OIDC is off by default: no button, and its callback is not a page."""
    with world.client() as client:
        page = client.get("/sign-in")
        assert "/sign-in/oidc" not in page.text and "Sign in with" not in page.text
        assert client.get("/sign-in/oidc/callback?code=x&state=y").status_code == 404
