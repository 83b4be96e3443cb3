"""Sign-in through the organisation's OpenID Connect identity provider (optional; off unless the
Airflow connection `cdr_portal_oidc` exists).

The authorization code flow with PKCE (S256). The browser carries the flow's state, nonce and
code verifier in a cookie signed under the portal's secret, so a callback is accepted only in
the browser that started the flow (a code and state sent to someone else's browser sign no one
in) and only once (the state is spent in the database before the code is redeemed). The ID
token from the token endpoint (client secret, basic or post) must be RS256 under a key of the
provider's JWKS (never `none`, never HS256 with the public key as secret), from the issuer, for
this client (and `azp` this client when there are several audiences), fresh, with the nonce;
only an `email` the provider says is verified is taken as the user's address.

Only https is spoken to the provider, except to a loopback address (the test provider of the
development kit listens on 127.0.0.1 over http).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

OIDC_CONNECTION = "cdr_portal_oidc"
CALLBACK_PATH = "/sign-in/oidc/callback"
START_PATH = "/sign-in/oidc"
FLOW_LIFETIME = timedelta(minutes=10)  # from the button to the callback
LEEWAY_SECONDS = 60  # clock skew allowed on exp and iat
DISCOVERY_SECONDS = 3600  # how long discovery and the JWKS are kept
JWKS_REFETCH_SECONDS = 60  # an unknown key id fetches the JWKS again, at most this often
ALGORITHM = "RS256"
SCOPES = "openid email"
AUTH_METHODS = ("client_secret_basic", "client_secret_post")
MAX_COOKIE_CHARS = 1000


class OidcConfigError(ValueError):
    """The connection `cdr_portal_oidc` cannot be used as it is (the message says why)."""


class OidcRefused(Exception):  # noqa: N818 (a refusal with its reason for the audit log)
    """A sign-in through the provider is refused; str() is the reason (audited, not shown),
    with the address's hash when the provider named a verified one."""

    def __init__(self, reason: str, address_hash: str | None = None) -> None:
        super().__init__(reason)
        self.address_hash = address_hash


@dataclass(frozen=True)
class OidcSettings:
    """The provider and this portal's registration with it."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    name: str  # the organisation, on the button: "Sign in with <name>"
    auth_method: str | None = None  # client_secret_basic|_post; None: what discovery offers
    ca_file: str | None = None  # a private authority of the provider's certificate
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class Provider:
    """What discovery says about the provider."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    auth_method: str


@dataclass(frozen=True)
class Flow:
    """A started sign-in: what the browser's cookie keeps until the callback."""

    state: str
    nonce: str
    verifier: str
    started: int  # unix seconds


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address((host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_url(url: str) -> bool:
    """https, or http to a loopback address (the tests' provider); nothing else."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname))


def settings_from_connection(connection_id: str = OIDC_CONNECTION) -> OidcSettings | None:
    """The provider of the connection: issuer URL in `host` (or extra `issuer`), client id in
    `login`, client secret in `password`; extra `name`, `auth_method`, `ca_file`. None (OIDC
    off) when there is no such connection."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(connection_id)
    except AirflowNotFoundException:
        return None
    extra = connection.extra_dejson
    issuer = extra.get("issuer") or connection.host or ""  # exact: some end in "/"
    if not allowed_url(issuer):
        raise OidcConfigError(
            f"connection {connection_id}: the issuer must be an https URL (http only on loopback)"
        )
    if not connection.login or not connection.password:
        raise OidcConfigError(
            f"connection {connection_id}: set the client id (login) and secret (password)"
        )
    method = extra.get("auth_method")
    if method is not None and method not in AUTH_METHODS:
        raise OidcConfigError(f"connection {connection_id}: auth_method is one of {AUTH_METHODS}")
    return OidcSettings(
        issuer=issuer,
        client_id=connection.login,
        client_secret=connection.password,
        name=str(extra.get("name") or urlsplit(issuer).hostname),
        auth_method=method,
        ca_file=extra.get("ca_file"),
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def code_challenge(verifier: str) -> str:
    """PKCE S256: base64url(SHA-256(verifier)), unpadded (RFC 7636)."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def new_flow(now: datetime) -> Flow:
    return Flow(
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(48),
        int(now.timestamp()),
    )


def _cookie_key(secret: str) -> bytes:
    """A key of its own for flow cookies (the secret also keys CSRF tokens and hashes)."""
    return hmac.new(secret.encode(), b"cdr-portal-oidc-flow-v1", hashlib.sha256).digest()


def flow_cookie(secret: str, flow: Flow) -> str:
    """The flow as a cookie value: its fields, then an HMAC of them under the portal's key."""
    body = _b64(json.dumps([flow.state, flow.nonce, flow.verifier, flow.started]).encode())
    return f"{body}.{_b64(hmac.new(_cookie_key(secret), body.encode(), 'sha256').digest())}"


def flow_of_cookie(secret: str, value: str | None, now: datetime) -> Flow | None:
    """The flow of a cookie made here and younger than FLOW_LIFETIME; None otherwise."""
    if not value or len(value) > MAX_COOKIE_CHARS or value.count(".") != 1:
        return None
    body, signature = value.split(".")
    expected = _b64(hmac.new(_cookie_key(secret), body.encode(), "sha256").digest())
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return None
    try:
        flow = Flow(*json.loads(_unb64(body)))
    except (ValueError, TypeError):
        return None
    age = now.timestamp() - flow.started
    if age > FLOW_LIFETIME.total_seconds() or age < -LEEWAY_SECONDS:
        return None
    return flow


def chosen_auth_method(configured: str | None, supported: list[str] | None) -> str:
    """How to send the client secret: as configured, else basic when the provider offers it
    (or says nothing: basic is the default of OpenID Connect Discovery), else post."""
    offered = supported if supported else ["client_secret_basic"]
    if configured:
        if configured not in offered:
            raise OidcRefused(f"the provider does not offer {configured}")
        return configured
    for method in AUTH_METHODS:
        if method in offered:
            return method
    raise OidcRefused(f"the provider offers none of {AUTH_METHODS}: {offered}")


def basic_credentials(client_id: str, client_secret: str) -> str:
    """client_secret_basic: both form-urlencoded before base64 (RFC 6749 2.3.1)."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def verified_email(claims: dict[str, Any]) -> str | None:
    """The `email` claim, only when `email_verified` is JSON true (not "true", not 1)."""
    email = claims.get("email")
    return email if claims.get("email_verified") is True and isinstance(email, str) else None


def check_claims(claims: dict[str, Any], settings: OidcSettings, nonce: str, now: float) -> None:
    """What PyJWT leaves to the client: azp, the token's age, the nonce."""
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if (len(audiences) > 1 or "azp" in claims) and claims.get("azp") != settings.client_id:
        raise OidcRefused("id token: azp is not this client")
    if now - int(claims["iat"]) > FLOW_LIFETIME.total_seconds() + LEEWAY_SECONDS:
        raise OidcRefused("id token: issued too long ago")
    if not isinstance(claims["nonce"], str) or not hmac.compare_digest(
        claims["nonce"].encode(), nonce.encode()
    ):
        raise OidcRefused("id token: wrong nonce")


class OidcClient:
    """The portal's side of the provider: discovery and JWKS (cached), the authorization URL,
    the code exchange and the ID token's checks. Thread-safe (routes run in a thread pool)."""

    def __init__(self, settings: OidcSettings, redirect_uri: str) -> None:
        self.settings = settings
        self.redirect_uri = redirect_uri
        self._lock = threading.Lock()
        self._provider: Provider | None = None
        self._provider_at = 0.0
        self._keys: dict[str, Any] = {}
        self._keys_at = 0.0

    def _http(self):  # noqa: ANN202 (an httpx.Client)
        import httpx

        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=self.settings.ca_file)
            if self.settings.ca_file
            else True
        )
        return httpx.Client(
            timeout=self.settings.timeout_seconds, verify=verify, follow_redirects=False
        )

    def _get_json(self, url: str) -> dict[str, Any]:
        import httpx

        if not allowed_url(url):
            raise OidcRefused(f"not an https URL: {url}")
        try:
            with self._http() as http:
                answer = http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise OidcRefused(f"provider unreachable: {type(exc).__name__}") from None
        if answer.status_code != 200:
            raise OidcRefused(f"{url} answered {answer.status_code}")
        try:
            document = answer.json()
        except ValueError:
            raise OidcRefused(f"{url} answered no JSON") from None
        if not isinstance(document, dict):
            raise OidcRefused(f"{url} answered no JSON object")
        return document

    def provider(self) -> Provider:
        """Discovery (`<issuer>/.well-known/openid-configuration`), kept for an hour."""
        with self._lock:
            if self._provider and time.monotonic() - self._provider_at < DISCOVERY_SECONDS:
                return self._provider
        base = self.settings.issuer.rstrip("/")
        document = self._get_json(f"{base}/.well-known/openid-configuration")
        if document.get("issuer") != self.settings.issuer:
            raise OidcRefused("discovery: the issuer is not the one configured")
        endpoints = [document.get(k) for k in ("authorization_endpoint", "token_endpoint")]
        endpoints.append(document.get("jwks_uri"))
        if not all(isinstance(url, str) and allowed_url(url) for url in endpoints):
            raise OidcRefused("discovery: an endpoint is missing or not https")
        provider = Provider(
            self.settings.issuer,
            *endpoints,
            chosen_auth_method(
                self.settings.auth_method, document.get("token_endpoint_auth_methods_supported")
            ),
        )
        with self._lock:
            self._provider, self._provider_at = provider, time.monotonic()
        return provider

    def authorization_url(self, flow: Flow) -> str:
        provider = self.provider()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": self.redirect_uri,
                "scope": SCOPES,
                "state": flow.state,
                "nonce": flow.nonce,
                "code_challenge": code_challenge(flow.verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in provider.authorization_endpoint else "?"
        return f"{provider.authorization_endpoint}{separator}{query}"

    def exchange(self, code: str, verifier: str) -> str:
        """The ID token for the code (the token endpoint, with the client secret)."""
        import httpx

        provider = self.provider()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        if provider.auth_method == "client_secret_basic":
            headers["Authorization"] = basic_credentials(
                self.settings.client_id, self.settings.client_secret
            )
        else:
            form |= {
                "client_id": self.settings.client_id,
                "client_secret": self.settings.client_secret,
            }
        try:
            with self._http() as http:
                answer = http.post(provider.token_endpoint, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise OidcRefused(f"token endpoint unreachable: {type(exc).__name__}") from None
        try:
            body = answer.json()
        except ValueError:
            body = {}
        if answer.status_code != 200 or not isinstance(body.get("id_token"), str):
            error = body.get("error", "no id_token") if isinstance(body, dict) else "no JSON"
            raise OidcRefused(f"token endpoint answered {answer.status_code} {error}"[:200])
        return body["id_token"]

    def _fetch_keys(self) -> dict[str, Any]:
        """The provider's RSA signing keys by key id (an unnamed key under '')."""
        import jwt

        document = self._get_json(self.provider().jwks_uri)
        try:
            keys = jwt.PyJWKSet.from_dict(document).keys
        except jwt.PyJWTError:
            raise OidcRefused("JWKS: no usable key") from None
        return {
            key.key_id or "": key.key
            for key in keys
            if key.key_type == "RSA" and key.public_key_use in (None, "sig")
        }

    def signing_key(self, kid: str | None) -> Any:  # noqa: ANN401 (an RSA public key)
        """The JWKS key of the id; the JWKS fetched again (at most once a minute) for an id
        it does not have, as after a key rotation."""
        wanted = kid or ""
        with self._lock:
            fresh = time.monotonic() - self._keys_at < DISCOVERY_SECONDS
            known = self._keys.get(wanted) if fresh else None
            may_fetch = time.monotonic() - self._keys_at >= JWKS_REFETCH_SECONDS or not fresh
        if known is not None:
            return known
        if may_fetch:
            keys = self._fetch_keys()
            with self._lock:
                self._keys, self._keys_at = keys, time.monotonic()
            if wanted in keys:
                return keys[wanted]
        raise OidcRefused("id token: signed by a key not in the provider's JWKS")

    def verified_email(self, id_token: str, nonce: str) -> str | None:
        """The verified address of an ID token that passes every check (None: it has no
        verified one); OidcRefused when a check fails."""
        import jwt

        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.DecodeError:
            raise OidcRefused("id token: not a JWS") from None
        if header.get("alg") != ALGORITHM:
            raise OidcRefused(f"id token: alg {str(header.get('alg'))[:20]} is not {ALGORITHM}")
        key = self.signing_key(header.get("kid"))
        try:
            claims = jwt.decode(
                id_token,
                key,
                algorithms=[ALGORITHM],
                audience=self.settings.client_id,
                issuer=self.settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "nonce"]},
            )
        except jwt.PyJWTError as exc:
            raise OidcRefused(f"id token: {type(exc).__name__}: {exc}"[:200]) from None
        check_claims(claims, self.settings, nonce, time.time())
        return verified_email(claims)
