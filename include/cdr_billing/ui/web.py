"""What every route of the Billing app shares: the pipeline's config and billing database (read
once per process), and the headers of its pages and files.

Each area of the app (months, drill-down, runs, prepaid) is a router of its own module that
app.py includes; they all import from here, never from app.py.
"""

from __future__ import annotations

from base64 import b64encode
from functools import cache
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import HTTPException
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse, HTMLResponse

from cdr_billing.ui.pages import PAGE_SCRIPT

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from cdr_billing.config import PipelineConfig


def script_hash(script: str) -> str:
    """A Content-Security-Policy source that allows this inline script and no other."""
    return "sha256-" + b64encode(sha256(script.encode()).digest()).decode()


Month = Annotated[
    str, PathParameter(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="billing month, YYYY-MM")
]
# The pages load nothing from elsewhere and run one script, theirs (pages.PAGE_SCRIPT, by its
# hash); only Airflow's UI may frame them.
PAGE_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    f"script-src '{script_hash(PAGE_SCRIPT)}'; frame-ancestors 'self'; base-uri 'none'"
)
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@cache
def config() -> PipelineConfig:
    """The pipeline's config as this process read it first."""
    from cdr_billing.config import load_config

    return load_config()


@cache
def _engine(conn_id: str) -> Engine:
    from cdr_billing.database import billing_engine

    return billing_engine(conn_id)


def billing_db() -> Engine:
    """The billing database of the config's connection (one pool per process)."""
    return _engine(config().billing.connection)


def secret_key() -> str:
    """Airflow's [api] secret_key (one per deployment, as its session cookies need)."""
    from airflow.configuration import conf

    return conf.get("api", "secret_key")


def clear_engines() -> None:
    """Forget the billing database's pool (tests point the connection elsewhere)."""
    _engine.cache_clear()


def html(document: str, status_code: int = 200) -> HTMLResponse:
    """A page, never cached, under the pages' content policy."""
    return HTMLResponse(
        document, status_code, headers={**NO_STORE, "Content-Security-Policy": PAGE_POLICY}
    )


def file(path: Path | None, download: bool = False, policy: str | None = None) -> FileResponse:
    """A file of a month (404 when there is none); as an attachment when `download`."""
    if path is None:
        raise HTTPException(404, "This month has no such file.")
    headers = {**NO_STORE, "Content-Security-Policy": policy} if policy else NO_STORE
    return FileResponse(path, headers=headers, filename=path.name if download else None)
