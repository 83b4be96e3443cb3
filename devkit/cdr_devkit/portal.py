"""`make portal`: the self-service portal on the demo's billing database, on local servers.

python -m cdr_devkit.portal [--port 8090] [--oidc] [--screenshot docs/portal.png]

Runs on what `make demo` leaves (.demo/billing.sqlite): upgrades it, starts the devkit SMTP
server (sign-in mails land as .eml files in .demo/portal-mail) and the devkit payment gateway
(the demo's prepaid lines: SUB-00060 approves, SUB-00061 declines), then serves the portal
(`python -m cdr_billing.portal`) and prints its URL and the addresses to sign in with. With
--screenshot it signs in as a demo user in headless Chromium (the link read from the mail),
saves the picture and stops. With --oidc the sign-in page also offers "Sign in with Example
University (devkit)": the devkit's OpenID Connect provider (cdr_devkit.oidc_provider), which
signs the demo user in at once.
Tests start the portal the same way (`start_portal`), on their own database and servers.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cdr_devkit.airflow_env import PROJECT_ROOT, airflow_settings
from cdr_devkit.demo import AIRFLOW_HOME, DEMO_DIR
from cdr_devkit.services import (
    LocalServices,
    ServerProcess,
    ServiceError,
    connection_env,
    free_port,
    smtp_connection,
    stop_on_sigterm,
)

READY_SECONDS = 60
DEMO_USER = "user60@c1002.example.com"  # SUB-00060: prepaid (approve), its statements
LINK = re.compile(r"https?://[^\s\"<>]+/sign-in/[A-Za-z0-9_-]{20,64}")


@dataclass
class PortalServer(ServerProcess):
    """A running portal and the address it is reached at."""

    url: str = ""
    log_path: Path = Path()


def _answers(url: str, context: object | None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/sign-in", timeout=2, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_portal(
    base: Path,
    env: dict[str, str],
    port: int = 0,
    tls: tuple[Path, Path] | None = None,
    ca_file: Path | None = None,
) -> PortalServer:
    """Start `python -m cdr_billing.portal` on loopback with the environment (its connections
    and secret) and wait until it answers; over https with `tls` (cert, key), checked
    against `ca_file`."""
    import ssl

    port = port or free_port()
    scheme = "https" if tls else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cdr_billing.portal", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--public-url", url]
    if tls:
        command += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    base.mkdir(parents=True, exist_ok=True)
    log_path = base / f"portal-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    context = ssl.create_default_context(cafile=str(ca_file)) if tls and ca_file else None
    deadline = time.monotonic() + READY_SECONDS
    while not _answers(url, context):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise ServiceError(f"the portal did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    return PortalServer("portal", port, process, url=url, log_path=log_path)


def mailed_links(maildir: Path, address: str) -> list[str]:
    """The sign-in links mailed to the address, oldest first."""
    links = []
    for path in sorted(maildir.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if address.lower() not in str(message["To"]).lower():
            continue
        for part in message.walk():
            if part.get_content_type() == "text/html":
                links += LINK.findall(part.get_content())
    return list(dict.fromkeys(links))


def wait_for_link(maildir: Path, address: str, known: int = 0, seconds: float = 30) -> str:
    """The newest link mailed to the address once there are more than `known`."""
    deadline = time.monotonic() + seconds
    while True:
        links = mailed_links(maildir, address)
        if len(links) > known:
            return links[-1]
        if time.monotonic() > deadline:
            raise ServiceError(f"no sign-in mail to {address} in {maildir}")
        time.sleep(0.2)


def demo_env(services: LocalServices, maildir: Path, oidc_port: int = 0) -> dict[str, str]:
    """Airflow settings and the connections of the demo's billing database, a fresh SMTP
    server and payment gateway, and a fresh portal secret; with `oidc_port` (the portal's),
    the devkit's OpenID Connect provider as `cdr_portal_oidc`."""
    smtp = services.start_smtp(maildir)
    gateway = services.start_payment_gateway("portal_gateway")
    connections = {
        "billing_db": {"conn_type": "sqlite", "host": str(DEMO_DIR / "billing.sqlite")},
        "smtp_default": smtp_connection(smtp.port),
        "payment_gateway": gateway.connection(),
    }
    if oidc_port:
        from cdr_devkit.oidc_provider import start_oidc_provider

        provider = start_oidc_provider(
            services.base / "oidc",
            f"http://127.0.0.1:{oidc_port}/sign-in/oidc/callback",
            DEMO_USER,
            name="Example University (devkit)",
        )
        services.servers.append(provider)
        connections["cdr_portal_oidc"] = provider.connection()
    return {
        **airflow_settings(AIRFLOW_HOME, log_level="WARNING"),
        **connection_env(connections),
        "CDR_PORTAL_SECRET_KEY": secrets.token_urlsafe(32),
    }


def upgrade_demo_database() -> None:
    from sqlalchemy import create_engine

    from cdr_billing.migrations import upgrade

    database = DEMO_DIR / "billing.sqlite"
    if not database.exists():
        raise SystemExit("no demo billing database: run `make demo` first")
    upgrade(create_engine(f"sqlite:///{database}"))


def screenshot(portal: PortalServer, maildir: Path, path: Path) -> None:
    """Sign in as the demo user in headless Chromium and save the signed-in page."""
    import tempfile

    from cdr_devkit.portal_browser import sign_in, signed_in_picture
    from cdr_devkit.screenshot import open_browser

    with tempfile.TemporaryDirectory() as profile, open_browser(Path(profile)) as devtools:
        session = sign_in(devtools, portal.url, maildir, DEMO_USER)
        path.write_bytes(signed_in_picture(devtools, session))
    print(f"saved {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--screenshot", type=Path, help="save a picture of the portal and stop")
    parser.add_argument(
        "--oidc", action="store_true", help="also sign in through a local OpenID Connect provider"
    )
    args = parser.parse_args()
    stop_on_sigterm()
    upgrade_demo_database()
    maildir = DEMO_DIR / "portal-mail"
    with LocalServices(DEMO_DIR / "portal-services") as services:
        port = free_port() if args.screenshot else args.port
        env = demo_env(services, maildir, oidc_port=port if args.oidc else 0)
        portal = start_portal(DEMO_DIR / "portal-services", env, port=port)
        services.servers.append(portal)
        if args.screenshot:
            screenshot(portal, maildir, args.screenshot.resolve())
            return 0
        print(f"Portal: {portal.url}  (log {portal.log_path.relative_to(PROJECT_ROOT)})")
        print(f"Sign in as {DEMO_USER} (prepaid, top-ups approved) or user61@c1003.example.com")
        print(f"(prepaid, top-ups declined); the sign-in mails land in {maildir}")
        if args.oidc:
            print(f"or press 'Sign in with Example University (devkit)': it signs in {DEMO_USER}")
        print("Ctrl-C stops the portal, the SMTP server and the payment gateway.")
        try:
            portal.process.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
