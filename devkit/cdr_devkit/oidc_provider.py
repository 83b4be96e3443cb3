"""A real OpenID Connect identity provider on loopback, for the portal's tests and the devkit.

python -m cdr_devkit.oidc_provider --client-id ID --client-secret-file F --redirect-uri URI
    --user EMAIL --port N --ready-file F [--name NAME]

Its issuer is http://127.0.0.1:<port>. It serves discovery
(/.well-known/openid-configuration), its JWKS (/jwks: one RSA key made at start, kid "k1"),
/authorize (no login form: it signs in the configured user at once and redirects back to the
registered redirect URI with a code and the state; response_type=code, scope openid and a PKCE
S256 challenge required) and /token (the client's secret by client_secret_basic or
client_secret_post; the code once, within 60 s, for the same redirect URI, with the verifier
of its challenge; answers an RS256 ID token with iss, sub, aud, azp, iat, exp, nonce, email,
email_verified).

`POST /control` (JSON) changes what the next tokens say, `GET /control` shows it with counts:
  {"user": EMAIL, "email_verified": true|false,
   "misbehave": "" | "wrong_audience" | "extra_audience" (aud [client, other], no azp)
      | "wrong_issuer" | "bad_signature" (another key, kid k1) | "unknown_key" (another key and
      kid) | "expired" | "missing_nonce" | "wrong_nonce" | "alg_none" | "hs256_public_key"
      (HS256 with the JWKS key's PEM as secret),
   "reuse_codes": true (a code redeemed again is answered again: the portal must refuse it)}
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from cdr_devkit.services import ServerProcess, serve_until_terminated

CODE_SECONDS = 60
TOKEN_SECONDS = 300
KEY_ID = "k1"
MAX_BODY_BYTES = 16 * 1024
MISBEHAVIOURS = (
    "",
    "wrong_audience",
    "extra_audience",
    "wrong_issuer",
    "bad_signature",
    "unknown_key",
    "expired",
    "missing_nonce",
    "wrong_nonce",
    "alg_none",
    "hs256_public_key",
)


@dataclass
class Behaviour:
    """Who /authorize signs in, and how the next ID tokens misbehave."""

    user: str
    email_verified: bool = True
    misbehave: str = ""
    reuse_codes: bool = False


@dataclass
class Counts:
    """What the provider did (tests assert on it)."""

    authorized: int = 0
    tokens: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    auth_methods: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Grant:
    """An issued code: for whom, for which redirect URI, with which challenge and nonce."""

    user: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    issued: float


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _rsa_key() -> Any:  # noqa: ANN401 (an RSA private key)
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_jwk(key: Any, kid: str) -> dict[str, str]:  # noqa: ANN401
    numbers = key.public_key().public_numbers()

    def unsigned(value: int) -> str:
        return b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": unsigned(numbers.n),
        "e": unsigned(numbers.e),
    }


def _public_pem(key: Any) -> bytes:  # noqa: ANN401
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def unsigned_token(header: dict, claims: dict, sign: Any = None) -> str:  # noqa: ANN401
    """A compact JWS built by hand (PyJWT will not make the forged ones); `sign` maps the
    signing input to the signature bytes (none: empty signature)."""
    head = b64(json.dumps(header).encode())
    body = b64(json.dumps(claims).encode())
    signature = sign(f"{head}.{body}".encode()) if sign else b""
    return f"{head}.{body}.{b64(signature)}"


class Provider:
    """The provider's state: keys, the client it knows, codes issued, behaviour, counts."""

    def __init__(
        self, issuer: str, client_id: str, client_secret: str, redirect_uri: str, user: str
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.key, self.other_key = _rsa_key(), _rsa_key()
        self.behaviour = Behaviour(user)
        self.counts = Counts()
        self.codes: dict[str, Grant] = {}
        self.used: dict[str, Grant] = {}
        self.lock = threading.Lock()

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "email"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [_public_jwk(self.key, KEY_ID)]}

    def refuse(self, reason: str) -> str:
        with self.lock:
            self.counts.refused[reason] = self.counts.refused.get(reason, 0) + 1
        return reason

    def authorize(self, query: dict[str, str]) -> tuple[int, str]:
        """(status, Location or error): a code for the configured user, back to the client."""
        if query.get("client_id") != self.client_id:
            return 400, self.refuse("unknown client")
        if query.get("redirect_uri") != self.redirect_uri:
            return 400, self.refuse("redirect_uri not registered")  # never redirect there
        back = query["redirect_uri"]
        error = None
        if query.get("response_type") != "code":
            error = "unsupported_response_type"
        elif "openid" not in query.get("scope", "").split():
            error = "invalid_scope"
        elif query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            error = "invalid_request"
        state = {"state": query["state"]} if "state" in query else {}
        if error:
            self.refuse(error)
            return 302, f"{back}?{urlencode({'error': error, **state})}"
        code = secrets.token_urlsafe(32)
        with self.lock:
            self.codes[code] = Grant(
                self.behaviour.user,
                back,
                query["code_challenge"],
                query.get("nonce"),
                time.time(),
            )
            self.counts.authorized += 1
        return 302, f"{back}?{urlencode({'code': code, 'iss': self.issuer, **state})}"

    def client_of(self, headers: Any, form: dict[str, str]) -> str | None:  # noqa: ANN401
        """The authenticated client id (basic or post), or None."""
        given = headers.get("Authorization", "")
        if given.startswith("Basic "):
            try:
                pair = base64.b64decode(given[6:]).decode()
            except ValueError:
                return None
            client, _, secret = pair.partition(":")
            client, secret, method = unquote(client), unquote(secret), "client_secret_basic"
        else:
            client, secret = form.get("client_id", ""), form.get("client_secret", "")
            method = "client_secret_post"
        if client != self.client_id or not hmac.compare_digest(secret, self.client_secret):
            return None
        with self.lock:
            self.counts.auth_methods[method] = self.counts.auth_methods.get(method, 0) + 1
        return client

    def token(self, headers: Any, form: dict[str, str]) -> tuple[int, dict]:  # noqa: ANN401
        if self.client_of(headers, form) is None:
            return 401, {"error": self.refuse("invalid_client")}
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": self.refuse("unsupported_grant_type")}
        code = form.get("code", "")
        with self.lock:
            grant = self.codes.pop(code, None)
            if grant is None and self.behaviour.reuse_codes:
                grant = self.used.get(code)
            if grant is not None:
                self.used[code] = grant
        if grant is None or time.time() - grant.issued > CODE_SECONDS:
            return 400, {"error": self.refuse("invalid_grant")}
        if form.get("redirect_uri") != grant.redirect_uri:
            return 400, {"error": self.refuse("invalid_grant")}
        verifier = form.get("code_verifier", "")
        if b64(hashlib.sha256(verifier.encode()).digest()) != grant.challenge:
            return 400, {"error": self.refuse("invalid_grant (PKCE)")}
        with self.lock:
            self.counts.tokens += 1
        return 200, {
            "access_token": secrets.token_urlsafe(32),
            "token_type": "Bearer",
            "expires_in": TOKEN_SECONDS,
            "id_token": self.id_token(grant),
        }

    def claims(self, grant: Grant) -> dict[str, Any]:
        now, how = int(time.time()), self.behaviour.misbehave
        claims = {
            "iss": self.issuer + ("/other" if how == "wrong_issuer" else ""),
            "sub": "sub-" + hashlib.sha256(grant.user.encode()).hexdigest()[:16],
            "aud": {
                "wrong_audience": "another-client",
                "extra_audience": [self.client_id, "another-client"],
            }.get(how, self.client_id),
            "iat": now - 3600 if how == "expired" else now,
            "exp": now - 1800 if how == "expired" else now + TOKEN_SECONDS,
            "email": grant.user,
            "email_verified": self.behaviour.email_verified,
        }
        if how != "extra_audience":
            claims["azp"] = self.client_id
        if how == "wrong_nonce":
            claims["nonce"] = secrets.token_urlsafe(16)
        elif how != "missing_nonce" and grant.nonce is not None:
            claims["nonce"] = grant.nonce
        return claims

    def id_token(self, grant: Grant) -> str:
        import jwt

        claims, how = self.claims(grant), self.behaviour.misbehave
        if how == "alg_none":
            return unsigned_token({"alg": "none", "typ": "JWT"}, claims)
        if how == "hs256_public_key":
            secret = _public_pem(self.key)
            return unsigned_token(
                {"alg": "HS256", "typ": "JWT", "kid": KEY_ID},
                claims,
                lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
            )
        key = self.other_key if how in ("bad_signature", "unknown_key") else self.key
        kid = "k2" if how == "unknown_key" else KEY_ID
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})

    def control(self, changes: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if "misbehave" in changes and changes["misbehave"] not in MISBEHAVIOURS:
                raise ValueError(f"misbehave is one of {MISBEHAVIOURS}")
            for name, value in changes.items():
                if not hasattr(self.behaviour, name):
                    raise ValueError(f"unknown setting {name}")
                setattr(self.behaviour, name, value)
            return self.status()

    def status(self) -> dict[str, Any]:
        return {"behaviour": asdict(self.behaviour), "counts": asdict(self.counts)}


class Handler(BaseHTTPRequestHandler):
    server: ProviderServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        """Quiet (a query holds codes)."""

    def _send(self, status: int, body: dict | None = None, location: str | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(min(length, MAX_BODY_BYTES))

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        provider = self.server.provider
        parts = urlsplit(self.path)
        if parts.path == "/.well-known/openid-configuration":
            self._send(200, provider.discovery())
        elif parts.path == "/jwks":
            self._send(200, provider.jwks())
        elif parts.path == "/authorize":
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            status, where = provider.authorize(query)
            if status == 302:
                self._send(302, location=where)
            else:
                self._send(status, {"error": where})
        elif parts.path == "/control":
            self._send(200, provider.status())
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        provider = self.server.provider
        path = urlsplit(self.path).path
        if path == "/token":
            form = {k: v[0] for k, v in parse_qs(self._body().decode()).items()}
            status, body = provider.token(self.headers, form)
            self._send(status, body)
        elif path == "/control":
            try:
                self._send(200, provider.control(json.loads(self._body() or b"{}")))
            except ValueError as exc:
                self._send(400, {"error": str(exc)})
        else:
            self._send(404, {"error": "not found"})


class ProviderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, make_provider: Any) -> None:  # noqa: ANN401
        super().__init__(("127.0.0.1", port), Handler)
        self.provider: Provider = make_provider(f"http://127.0.0.1:{self.server_address[1]}")


@dataclass
class OidcProviderServer(ServerProcess):
    """A running local provider: its issuer and the client registered with it."""

    issuer: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    organisation: str = ""

    def control(self, **changes: object) -> dict:
        """Change what the next tokens say (see the module's doc); the status after it."""
        import urllib.request

        request = urllib.request.Request(
            f"{self.issuer}/control", data=json.dumps(changes).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def status(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"{self.issuer}/control", timeout=10) as response:
            return json.loads(response.read())

    def connection(self, **extra: object) -> dict:
        """The portal's Airflow connection `cdr_portal_oidc` for this provider."""
        return {
            "conn_type": "http",
            "host": self.issuer,
            "login": self.client_id,
            "password": self.client_secret,
            "extra": {"name": self.organisation, **extra},
        }


def start_oidc_provider(
    base: Path,
    redirect_uri: str,
    user: str,
    name: str = "Example University",
    client_id: str = "cdr-portal",
) -> OidcProviderServer:
    """Start a provider (its own process) that knows one client with a fresh secret; wait
    until it has bound its port."""
    import subprocess
    import sys

    from cdr_devkit.services import ServiceError

    base.mkdir(parents=True, exist_ok=True)
    secret_file, ready = base / "oidc.secret", base / "oidc.ready"
    secret_file.touch(mode=0o600)
    secret_file.write_text(secrets.token_urlsafe(32) + "+/:", encoding="utf-8")  # basic quotes
    ready.unlink(missing_ok=True)
    command = [sys.executable, "-m", "cdr_devkit.oidc_provider", "--client-id", client_id]
    command += ["--client-secret-file", str(secret_file), "--redirect-uri", redirect_uri]
    command += ["--user", user, "--port", "0", "--ready-file", str(ready)]
    with (base / "oidc.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not (ready.exists() and ready.read_text().strip()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise ServiceError(f"the OIDC provider did not start: see {base / 'oidc.log'}")
        time.sleep(0.05)
    port = int(ready.read_text())
    return OidcProviderServer(
        "oidc",
        port,
        process,
        issuer=f"http://127.0.0.1:{port}",
        client_id=client_id,
        client_secret=secret_file.read_text(encoding="utf-8"),
        organisation=name,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret-file", type=Path, required=True)
    parser.add_argument("--redirect-uri", required=True)
    parser.add_argument("--user", required=True, help="the address /authorize signs in")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    secret = args.client_secret_file.read_text(encoding="utf-8")
    server = ProviderServer(
        args.port,
        lambda issuer: Provider(issuer, args.client_id, secret, args.redirect_uri, args.user),
    )
    serve_until_terminated(server, args.ready_file)


if __name__ == "__main__":
    main()
