"""What the portal tests share: a billing database on the real PostgreSQL with two users (their
entitlements, prepaid lines, this month's calls, statements and a top-up), the devkit SMTP
server and payment gateway, and the portal served by `python -m cdr_billing.portal`
(cdr_devkit.portal.start_portal), over http or over https with a certificate made here."""

from __future__ import annotations

import re
import secrets
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import create_engine, insert
from sqlalchemy.engine import Engine

from cdr_billing.migrations import upgrade
from cdr_billing.prepaid import accounts, topups
from cdr_billing.prepaid.balances import lock_accounts, post
from cdr_billing.schema import (
    billing_batch,
    entitlement,
    entitlement_snapshot,
    statement,
    statement_document,
)
from cdr_devkit.oidc_provider import OidcProviderServer, start_oidc_provider
from cdr_devkit.payment_gateway import PaymentGatewayServer, server_certificates
from cdr_devkit.portal import PortalServer, start_portal, wait_for_link
from cdr_devkit.services import LocalServices, connection_env, free_port, smtp_connection

ALICE, BOB, NOBODY = "alice@example.org", "bob@example.org", "nobody@example.org"
ALICE_PAYS, ALICE_DECLINED, ALICE_POSTPAID = "46701110001", "46701110002", "EXT-5001"
BOB_LINE = "46701119999"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class PortalWorld:
    """A served portal and what the tests look up in it."""

    portal: PortalServer
    engine: Engine
    maildir: Path
    gateway: PaymentGatewayServer
    statements: dict[str, str]  # name -> statement_id
    bob_topup: int
    ca_file: Path | None = None
    secret: str = field(default="", repr=False)
    clients: int = 0
    oidc: OidcProviderServer | None = None  # the organisation's provider, when configured

    @property
    def url(self) -> str:
        return self.portal.url

    def client(self) -> httpx.Client:
        """An HTTP client from a loopback address of its own (127.0.0.2, .3, ...): to the
        portal each client is another visitor, with rate limits of its own."""
        self.clients += 1
        verify = ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{self.clients + 1}", verify=verify)
        return httpx.Client(base_url=self.url, transport=transport, verify=verify, timeout=30)


def _prepaid(conn, account_id: str, method: str, balance_minor: int) -> None:
    settings = accounts.AccountSettings(
        currency="EUR",
        low_balance_minor=0,
        topup_minor=1000,
        lock_level_minor=0,
        unlock_level_minor=200,
        payment_method_ref=method,
    )
    accounts.add(conn, account_id, settings, changed_by="test")
    if balance_minor:
        row = lock_accounts(conn, [account_id])[account_id]
        post(conn, row, "credit", balance_minor, f"seed:{account_id}", "test", reason="seed")


def _calls(conn, account_id: str, now: datetime) -> None:
    row = lock_accounts(conn, [account_id])[account_id]
    for n, cost in enumerate((35, 120, 48)):
        post(
            conn,
            row,
            "debit",
            -cost,
            f"debit:{account_id}:{n}",
            "test",
            call_key=f"{account_id}:{n}",
            call_start=now - timedelta(seconds=1 + n),  # this month (the portal's)
            billed_seconds=60 * (n + 1),
        )


def _statement(conn, archive: Path, sid: str, batch: int, user: str, address: str, total: int):
    conn.execute(
        insert(statement).values(
            statement_id=sid,
            batch_id=batch,
            customer_id="C1",
            user_id=user,
            currency="EUR",
            address=address,
            timezone="Europe/Stockholm",
            mask_digits=3,
            deliver="none",
            total_minor=total,
            call_count=2,
            billed_seconds=120,
            prepaid=False,
        )
    )
    html, pdf = archive / f"{sid}.html", archive / f"{sid}.pdf"
    html.write_text(
        f"<!doctype html><html><head><title>Statement {sid}</title></head><body>"
        f"<h1>Statement for {user}</h1><p>Total {total / 100:.2f} EUR</p></body></html>"
    )
    pdf.write_bytes(b"%PDF-1.4\n% statement " + sid.encode() + b"\n%%EOF\n")
    conn.execute(
        insert(statement_document).values(
            statement_id=sid,
            html_path=str(html),
            html_sha256="0" * 64,
            pdf_path=str(pdf),
            pdf_sha256="0" * 64,
            rendered_at=datetime.now(UTC),
        )
    )


def seed(engine: Engine, archive: Path) -> tuple[dict[str, str], int]:
    """Alice (two prepaid lines: one pays, one is declined; one post-paid line) and Bob (one
    prepaid line); statements of a current and a superseded batch; a top-up of Bob."""
    now = datetime.now(UTC)
    archive.mkdir(parents=True, exist_ok=True)
    with engine.begin() as conn:
        snapshot = conn.execute(
            insert(entitlement_snapshot)
            .values(taken_at=now, source_name="test", sha256=secrets.token_hex(32), row_count=4)
            .returning(entitlement_snapshot.c.snapshot_id)
        ).scalar_one()
        for account_id, address in (
            (ALICE_PAYS, "Alice@Example.org"),
            (ALICE_DECLINED, ALICE),
            (ALICE_POSTPAID, ALICE),
            (BOB_LINE, BOB),
        ):
            conn.execute(
                insert(entitlement).values(
                    snapshot_id=snapshot,
                    account_id=account_id,
                    user_principal_name=address,
                    customer_id="C1",
                    sequence_number="1",
                    default_sequence_number="1",
                    entitled=True,
                    last_login="2026-01-01",
                )
            )
        _prepaid(conn, ALICE_PAYS, "approve", 500)
        _prepaid(conn, ALICE_DECLINED, "decline", 0)
        _prepaid(conn, BOB_LINE, "approve", 900)
        _calls(conn, ALICE_PAYS, now)
        batches = {}
        for month, status in (("2026-04", "superseded"), ("2026-05", "current")):
            batches[status] = conn.execute(
                insert(billing_batch)
                .values(billing_month=month, run_id=f"r-{month}", status=status, counts="{}")
                .returning(billing_batch.c.batch_id)
            ).scalar_one()
        statements = {
            "alice": "a1" + "0" * 30,
            "alice_superseded": "a2" + "0" * 30,
            "bob": "b1" + "0" * 30,
        }
        _statement(
            conn, archive, statements["alice"], batches["current"], ALICE_POSTPAID, ALICE, 1234
        )
        _statement(
            conn,
            archive,
            statements["alice_superseded"],
            batches["superseded"],
            ALICE_POSTPAID,
            ALICE,
            999,
        )
        _statement(conn, archive, statements["bob"], batches["current"], BOB_LINE, BOB, 4321)
    bob_topup = topups.open_user_request(engine, BOB_LINE, 1000, "bob-" + "0" * 28, "test", now)
    return statements, int(bob_topup["request_id"])


def self_signed(folder: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1 signed by a fresh authority (cryptography): cert, key, CA."""
    made = server_certificates()
    cert, key, ca = folder / "portal.pem", folder / "portal.key", folder / "ca.pem"
    cert.write_text(made.server.cert_pem)
    key.write_text(made.server.key_pem)
    key.chmod(0o600)
    ca.write_text(made.authority.cert_pem)
    return cert, key, ca


@contextmanager
def running_portal(
    postgres, folder: Path, name: str, tls: bool = False, oidc: bool = False
) -> Iterator[PortalWorld]:
    """A seeded database, SMTP server, payment gateway and the portal on them; with `oidc`,
    also the devkit's OpenID Connect provider (signing Alice in) as `cdr_portal_oidc`."""
    database = postgres.create_database(name)
    engine = create_engine(postgres.url_of(database))
    upgrade(engine)
    statements, bob_topup = seed(engine, folder / "archive")
    maildir = folder / "mail"
    secret = secrets.token_urlsafe(32)
    with LocalServices(folder / "services") as services:
        smtp = services.start_smtp(maildir)
        gateway = services.start_payment_gateway("gateway", hang_seconds=5)
        connections = {
            "billing_db": postgres.connection(database),
            "smtp_default": smtp_connection(smtp.port),
            "payment_gateway": gateway.connection(),
        }
        port = free_port()
        provider = None
        if oidc:
            callback = f"{'https' if tls else 'http'}://127.0.0.1:{port}/sign-in/oidc/callback"
            provider = start_oidc_provider(folder / "oidc", callback, ALICE)
            services.servers.append(provider)
            connections["cdr_portal_oidc"] = provider.connection()
        env = {**connection_env(connections), "CDR_PORTAL_SECRET_KEY": secret}
        cert = self_signed(folder) if tls else None
        portal = start_portal(
            folder / "services",
            env,
            port=port,
            tls=(cert[0], cert[1]) if cert else None,
            ca_file=cert[2] if cert else None,
        )
        services.servers.append(portal)
        yield PortalWorld(
            portal,
            engine,
            maildir,
            gateway,
            statements,
            bob_topup,
            ca_file=cert[2] if cert else None,
            secret=secret,
            oidc=provider,
        )
    engine.dispose()


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, f"no CSRF token on the page: {page[:500]}"
    return found.group(1)


def sign_in(world: PortalWorld, client: httpx.Client, address: str) -> None:
    """Sign the client in by the link mailed to the address (as a browser would)."""
    from cdr_devkit.portal import mailed_links

    known = len(mailed_links(world.maildir, address))
    form = client.get("/sign-in")
    asked = client.post("/sign-in", data={"csrf_token": csrf_of(form.text), "address": address})
    assert asked.status_code == 303, asked.text
    link = wait_for_link(world.maildir, address, known)
    confirm = client.get(link.removeprefix(world.url))
    token = re.search(r'name="token" value="([^"]+)"', confirm.text).group(1)
    done = client.post(
        "/sign-in/confirm", data={"csrf_token": csrf_of(confirm.text), "token": token}
    )
    assert done.status_code == 303 and done.headers["location"] == "/", done.text
