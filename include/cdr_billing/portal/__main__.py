"""python -m cdr_billing.portal: serve the portal with uvicorn (docs/portal.md).

The billing database, the SMTP server and the payment gateway are the pipeline's Airflow
connections (pipeline.yaml names them). The portal's secret (it keys the CSRF tokens, the
account references and the client hashes) comes from $CDR_PORTAL_SECRET_KEY or the password
of the Airflow connection `cdr_portal`; it is never logged. Users reach the portal at
--public-url (or $CDR_PORTAL_URL): the links in mails are built from it, and cookies are
Secure with the __Host- prefix when it is https. With the Airflow connection `cdr_portal_oidc`
users may also sign in through the organisation's OpenID Connect provider (portal.oidc).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

SECRET_ENV = "CDR_PORTAL_SECRET_KEY"
URL_ENV = "CDR_PORTAL_URL"
SECRET_CONNECTION = "cdr_portal"
MIN_SECRET_CHARS = 32

log = logging.getLogger("cdr_billing.portal")


class PortalConfigError(ValueError):
    """The portal cannot start as configured (the message says what to set)."""


def portal_secret(connection_id: str = SECRET_CONNECTION) -> str:
    """The portal's secret: the environment's, else the connection's password."""
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        from airflow.sdk import BaseHook

        try:
            secret = BaseHook.get_connection(connection_id).password
        except Exception:  # noqa: BLE001 (no such connection: say what to set)
            secret = None
    if not secret or len(secret) < MIN_SECRET_CHARS:
        raise PortalConfigError(
            f"set {SECRET_ENV} (or the password of connection {connection_id}) to a random "
            f"value of at least {MIN_SECRET_CHARS} characters, e.g. `openssl rand -hex 32`"
        )
    return secret


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cdr_billing.portal", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate (chain): serve https")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--public-url", help=f"the address users reach (default ${URL_ENV})")
    parser.add_argument(
        "--forwarded-allow-ips",
        help="proxies whose X-Forwarded-For/-Proto are trusted (default: none)",
    )
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    return args


def public_url(args: argparse.Namespace) -> str:
    given = args.public_url or os.environ.get(URL_ENV)
    if given:
        return given.rstrip("/")
    scheme = "https" if args.tls_cert else "http"
    return f"{scheme}://{args.host}:{args.port}"


def build_app(args: argparse.Namespace):  # noqa: ANN201 (a FastAPI app, imported late)
    from cdr_billing import database
    from cdr_billing.config import load_config
    from cdr_billing.portal import oidc
    from cdr_billing.portal.app import PortalSettings, create_app
    from cdr_billing.prepaid.gateway import GatewaySettings

    config = load_config()
    try:
        provider = oidc.settings_from_connection()
    except oidc.OidcConfigError as exc:
        raise PortalConfigError(str(exc)) from None
    if provider:
        log.info("sign-in also with %s (%s)", provider.name, provider.issuer)
    else:
        log.info("OIDC sign-in off (no connection %s)", oidc.OIDC_CONNECTION)
    settings = PortalSettings(
        engine=database.billing_engine(config.billing.connection),
        secret=portal_secret(),
        public_url=public_url(args),
        timezone=config.billing.timezone,
        archive_root=Path(config.archive_root),
        smtp_connection=config.smtp_connection,
        gateway=GatewaySettings(
            connection_id=config.prepaid.gateway_connection,
            connect_timeout_seconds=config.prepaid.gateway_connect_timeout_seconds,
            read_timeout_seconds=config.prepaid.gateway_read_timeout_seconds,
        ),
        oidc=provider,
    )
    return create_app(settings), settings.public_url


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = parse_arguments(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app, url = build_app(args)
    except PortalConfigError as exc:
        print(f"portal: {exc}", file=sys.stderr)
        return 2
    log.info("portal at %s (listening on %s:%s)", url, args.host, args.port)
    # no access log: a sign-in link's path holds its token
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        access_log=False,
        server_header=False,
        proxy_headers=bool(args.forwarded_allow_ips),
        forwarded_allow_ips=args.forwarded_allow_ips,
        log_level="info",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
