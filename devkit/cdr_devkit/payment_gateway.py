"""A real payment gateway over HTTPS on loopback, for the tests and the demo.

python -m cdr_devkit.payment_gateway --state-dir DIR --token-file F --port N --ready-file F
    [--hang-seconds S]

It speaks the interface of cdr_billing.prepaid.gateway (POST /v1/charges, bearer token,
Idempotency-Key). At start it makes a certificate authority and a server certificate for
127.0.0.1 and localhost, and writes the authority to <state-dir>/ca.pem (what a client pins).
What it does with a new key depends on the request's payment_method:

    approve               charge, answer approved
    decline               answer declined ("insufficient funds"), nothing charged
    timeout               nothing charged; hang --hang-seconds, then close without answering
    timeout-after-charge  charge and record the approval, then hang as `timeout`
    error                 answer 500, nothing recorded
    anything else         answer declined ("unknown payment method")

A key seen before gets its recorded answer again (200) whatever its method, or 409 when the
body differs. Every request and charge is kept in <state-dir>/gateway.sqlite; tests read
them with `recorded_charges` and `requests_per_key`.
"""

from __future__ import annotations

import argparse
import datetime
import hmac
import ipaddress
import json
import signal
import sqlite3
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple

from cdr_devkit.services import ServerProcess

CHARGES_PATH = "/v1/charges"
STATE_FILE = "gateway.sqlite"
CA_FILE = "ca.pem"
SERVER_CERT_FILE = "server.pem"
DECLINE_REASON = "insufficient funds"
CERTIFICATE_DAYS = 30
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS charge (idempotency_key TEXT PRIMARY KEY, body TEXT NOT NULL,"
    " answer TEXT NOT NULL, charged INTEGER NOT NULL, account_id TEXT NOT NULL,"
    " amount_minor INTEGER NOT NULL, created_at TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS request (n INTEGER PRIMARY KEY AUTOINCREMENT,"
    " idempotency_key TEXT NOT NULL, received_at TEXT NOT NULL)",
)


class Certificate(NamedTuple):
    """A certificate and its private key, both PEM."""

    cert_pem: str
    key_pem: str


class ServerCertificates(NamedTuple):
    """The authority a client pins and the certificate the server presents (signed by it)."""

    authority: Certificate
    server: Certificate


def _key_pem(key: object) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _name(common_name: str) -> object:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: object, issuer: object, public_key: object) -> object:
    from cryptography import x509

    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def certificate_authority(name: str = "cdr-devkit payment gateway CA") -> Certificate:
    """A fresh self-signed certificate authority (also what a test pins to be refused)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(name), _name(name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Certificate(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def server_certificates() -> ServerCertificates:
    """A new authority and a loopback server certificate it signed (127.0.0.1, localhost)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    authority = certificate_authority()
    ca_cert = x509.load_pem_x509_certificate(authority.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(authority.key_pem.encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        _builder(_name("localhost"), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server = Certificate(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))
    return ServerCertificates(authority, server)


class RecordedCharge(NamedTuple):
    """An idempotency key's recorded answer; charged: money was taken for it."""

    idempotency_key: str
    account_id: str
    amount_minor: int
    status: str
    charged: bool


def _open(state_dir: Path) -> sqlite3.Connection:
    db = sqlite3.connect(state_dir / STATE_FILE, timeout=30, check_same_thread=False)
    for statement in SCHEMA:
        db.execute(statement)
    return db


def recorded_charges(state_dir: Path) -> list[RecordedCharge]:
    """Every key the gateway answered approved or declined, in the order it first saw them."""
    with _open(state_dir) as db:
        rows = db.execute(
            "SELECT idempotency_key, account_id, amount_minor, answer, charged FROM charge"
            " ORDER BY rowid"
        ).fetchall()
    return [
        RecordedCharge(key, account, amount, json.loads(answer)["status"], bool(charged))
        for key, account, amount, answer, charged in rows
    ]


def requests_per_key(state_dir: Path) -> dict[str, int]:
    """How many charge requests reached the gateway with each key (answered or not)."""
    with _open(state_dir) as db:
        rows = db.execute(
            "SELECT idempotency_key, count(*) FROM request GROUP BY idempotency_key"
        ).fetchall()
    return dict(rows)


class Outcome(NamedTuple):
    """What to answer a request: HTTP status and JSON body, or hang (no answer)."""

    status: int
    body: dict | None
    hang: bool = False


class ChargeBook:
    """The gateway's memory: one answer per idempotency key, decided under one lock so
    concurrent requests with one key charge once."""

    def __init__(self, state_dir: Path) -> None:
        self._db = _open(state_dir)
        self._lock = threading.Lock()

    def _record(self, key: str, body: dict, answer: dict, charged: bool) -> None:
        self._db.execute(
            "INSERT INTO charge VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                json.dumps(body, sort_keys=True),
                json.dumps(answer),
                int(charged),
                body["account_id"],
                body["amount_minor"],
                datetime.datetime.now(datetime.UTC).isoformat(),
            ),
        )

    def _new_key(self, key: str, body: dict) -> Outcome:
        method = body["payment_method"]
        charge_id = f"ch_{uuid.uuid4().hex}"
        if method in ("approve", "timeout-after-charge"):
            answer = {"id": charge_id, "status": "approved", "reason": None}
            self._record(key, body, answer, charged=True)
            return Outcome(201, answer, hang=method == "timeout-after-charge")
        if method == "timeout":
            return Outcome(0, None, hang=True)
        if method == "error":
            return Outcome(500, {"error": "gateway failure (devkit: payment_method 'error')"})
        reason = DECLINE_REASON if method == "decline" else "unknown payment method"
        answer = {"id": charge_id, "status": "declined", "reason": reason}
        self._record(key, body, answer, charged=False)
        return Outcome(201, answer)

    def answer(self, key: str, body: dict) -> Outcome:
        """The answer to a charge request: the key's first answer replayed, or a new one."""
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO request (idempotency_key, received_at) VALUES (?, ?)",
                (key, datetime.datetime.now(datetime.UTC).isoformat()),
            )
            stored = self._db.execute(
                "SELECT body, answer FROM charge WHERE idempotency_key = ?", (key,)
            ).fetchone()
            if stored is None:
                return self._new_key(key, body)
            if json.loads(stored[0]) != body:
                return Outcome(409, {"error": "idempotency key reused with another body"})
            return Outcome(200, json.loads(stored[1]))


def valid_charge(body: object) -> bool:
    """A charge body has exactly the interface's fields with their types."""
    return (
        isinstance(body, dict)
        and set(body) == {"account_id", "payment_method", "amount_minor", "currency"}
        and isinstance(body["account_id"], str)
        and isinstance(body["payment_method"], str)
        and type(body["amount_minor"]) is int
        and body["amount_minor"] > 0
        and isinstance(body["currency"], str)
        and len(body["currency"]) == 3
    )


class GatewayServer(ThreadingHTTPServer):
    """The HTTPS server with its token, its charge book and how long a hang lasts."""

    daemon_threads = True  # hanging handlers never hold up a stop

    def __init__(self, port: int, token: str, book: ChargeBook, hang_seconds: float) -> None:
        super().__init__(("127.0.0.1", port), ChargeHandler)
        self.token = token
        self.book = book
        self.hang_seconds = hang_seconds

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that refused the certificate or went away: nothing to report."""


class ChargeHandler(BaseHTTPRequestHandler):
    server: GatewayServer
    timeout = 30  # a client that never sends its request is dropped

    def setup(self) -> None:
        """Finish the TLS handshake here, in the request's thread (see main)."""
        self.request.settimeout(self.timeout)
        self.request.do_handshake()
        super().setup()

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.server.token}".encode())

    def _read_json(self) -> object:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:
            return None

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if self.path != CHARGES_PATH:
            return self._reply(404, {"error": "not found"})
        if not self._authorised():
            return self._reply(401, {"error": "invalid token"})
        key, body = self.headers.get("Idempotency-Key", ""), self._read_json()
        if not key or not valid_charge(body):
            return self._reply(400, {"error": "a charge needs an Idempotency-Key and its fields"})
        outcome = self.server.book.answer(key, body)
        if outcome.hang:
            time.sleep(self.server.hang_seconds)
            self.close_connection = True
            return None
        return self._reply(outcome.status, outcome.body)


def _tls_context(state_dir: Path) -> ssl.SSLContext:
    certificates = server_certificates()
    (state_dir / CA_FILE).write_text(certificates.authority.cert_pem, encoding="utf-8")
    chain, key = state_dir / SERVER_CERT_FILE, state_dir / "server.key"
    chain.write_text(certificates.server.cert_pem, encoding="utf-8")
    key.touch(mode=0o600)
    key.write_text(certificates.server.key_pem, encoding="utf-8")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    return context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=30.0)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    token = args.token_file.read_text(encoding="utf-8").strip()
    server = GatewayServer(args.port, token, ChargeBook(args.state_dir), args.hang_seconds)
    # the handshake runs in each request's thread: a stalled client never blocks the others
    server.socket = _tls_context(args.state_dir).wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args.ready_file.write_text(str(server.server_address[1]), encoding="utf-8")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    server.shutdown()
    server.server_close()


@dataclass
class PaymentGatewayServer(ServerProcess):
    """A running local gateway: its state, the CA to pin and the token it accepts."""

    state_dir: Path = Path()
    token: str = ""

    @property
    def ca_cert(self) -> str:
        """The authority of the server's certificate (PEM), to pin in the connection."""
        return (self.state_dir / CA_FILE).read_text(encoding="utf-8")

    @property
    def server_cert(self) -> str:
        """The certificate the server presents (PEM), to pin it instead of its authority."""
        return (self.state_dir / SERVER_CERT_FILE).read_text(encoding="utf-8")

    def connection(self, **overrides: object) -> dict:
        """The Airflow connection for this gateway (fields overridable, e.g. password)."""
        spec = {
            "conn_type": "https",
            "host": "127.0.0.1",
            "port": self.port,
            "password": self.token,
            "extra": {"ca_cert": self.ca_cert},
        }
        return {**spec, **overrides}

    def charges(self) -> list[RecordedCharge]:
        """The keys the gateway answered (see `recorded_charges`)."""
        return recorded_charges(self.state_dir)

    def requests(self) -> dict[str, int]:
        """Requests received per key (see `requests_per_key`)."""
        return requests_per_key(self.state_dir)


if __name__ == "__main__":
    main()
