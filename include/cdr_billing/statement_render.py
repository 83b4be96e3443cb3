"""Statements as HTML and PDF, from ONE Jinja2 template (templates/statement.html.j2).

The page the Billing page and the portal show is the very HTML WeasyPrint prints: screen and
paper cannot drift apart. WeasyPrint (BSD, maintained, CSS paged media: @page, page numbers,
repeated table headers) runs in the worker; its url_fetcher refuses every URL, so a statement
never makes a request (the template has no external URL anyway). docs/statements.md says why
WeasyPrint and not Chromium, xhtml2pdf, reportlab/fpdf2 or wkhtmltopdf.

Documents go to the archive beside the month: <archive_root>/statements/<month>/batch-<id>/,
named by statement id, with their SHA-256 in statement_document.
"""

from __future__ import annotations

import calendar
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection, Engine

from cdr_billing.money import from_minor_units
from cdr_billing.privacy import shown_id
from cdr_billing.schema import billing_batch, statement, statement_document
from cdr_billing.statements import StatementView, read_statement

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "templates"
TEMPLATE = "statement.html.j2"
HTML, PDF = "html", "pdf"


class RefusedUrl(ValueError):
    """A statement asked for a URL: statements are self-contained."""


def _refusing_fetcher() -> object:
    """A WeasyPrint URL fetcher that refuses every URL (no file, no network) and stops the
    rendering: a statement asking for one is a bug, not a missing picture."""
    from weasyprint.urls import URLFetcher

    class RefusingFetcher(URLFetcher):
        def fetch(self, url: str, headers: dict | None = None) -> object:
            raise RefusedUrl(f"statements fetch no URL ({url[:60]})")

    return RefusingFetcher(fail_on_errors=True)


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _duration(seconds: int | None) -> str:
    """Seconds as h:mm:ss (or m:ss)."""
    seconds = int(seconds or 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _aware(moment: datetime) -> datetime:
    """A stored time as aware UTC (SQLite gives naive UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def render_html(view: StatementView) -> str:
    """The statement as a self-contained HTML page (the PDF's source)."""
    head = view.head
    zone, currency = ZoneInfo(head["timezone"]), head["currency"]

    def money(minor: int | None) -> str:
        return "" if minor is None else f"{from_minor_units(int(minor), currency)} {currency}"

    def local(moment: datetime) -> str:
        return _aware(moment).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S")

    year, month = (int(part) for part in head["billing_month"].split("-"))
    last_day = calendar.monthrange(year, month)[1]
    return (
        _environment()
        .get_template(TEMPLATE)
        .render(
            head=head,
            calls=view.calls,
            subtotals=view.subtotals,
            user_shown=shown_id(head["user_id"]),
            period=f"{head['billing_month']}-01 to {head['billing_month']}-{last_day:02d}",
            money=money,
            local=local,
            duration=_duration,
        )
    )


def render_pdf(html: str) -> bytes:
    """The HTML printed to PDF by WeasyPrint, fetching no URL."""
    import weasyprint  # heavy (Pango): only where PDFs are made
    from weasyprint.urls import FatalURLFetchingError

    document = weasyprint.HTML(string=html, base_url=None, url_fetcher=_refusing_fetcher())
    try:
        return document.write_pdf()
    except FatalURLFetchingError as error:  # a BaseException: made an ordinary error here
        raise RefusedUrl(f"a statement asked for a URL: {error}") from None


@dataclass(frozen=True)
class RenderedBatch:
    """What render_batch wrote."""

    statements: int
    folder: Path


def batch_folder(archive_root: Path, billing_month: str, batch_id: int) -> Path:
    """Where a batch's statements are archived."""
    return Path(archive_root) / "statements" / billing_month / f"batch-{batch_id}"


def _write(path: Path, content: bytes) -> str:
    """Write a file atomically (a retry rewrites the same content); return its SHA-256."""
    temporary = path.with_suffix(path.suffix + ".part")
    temporary.write_bytes(content)
    temporary.replace(path)
    return hashlib.sha256(content).hexdigest()


def render_batch(engine: Engine, batch_id: int, archive_root: Path) -> RenderedBatch:
    """Render every statement of a batch as HTML and PDF into the archive and record them
    (a retried task renders again and replaces the records: same content)."""
    with engine.connect() as conn:
        month = conn.execute(
            select(billing_batch.c.billing_month).where(billing_batch.c.batch_id == batch_id)
        ).scalar_one()
        ids = (
            conn.execute(
                select(statement.c.statement_id)
                .where(statement.c.batch_id == batch_id)
                .order_by(statement.c.statement_id)
            )
            .scalars()
            .all()
        )
    folder = batch_folder(archive_root, month, batch_id)
    folder.mkdir(parents=True, exist_ok=True)
    for wanted in ids:
        with engine.connect() as conn:
            view = read_statement(conn, wanted)
        html = render_html(view)
        html_path, pdf_path = folder / f"{wanted}.html", folder / f"{wanted}.pdf"
        record = {
            "statement_id": wanted,
            "html_path": str(html_path),
            "html_sha256": _write(html_path, html.encode("utf-8")),
            "pdf_path": str(pdf_path),
            "pdf_sha256": _write(pdf_path, render_pdf(html)),
            "rendered_at": datetime.now(UTC),
        }
        with engine.begin() as conn:
            conn.execute(
                delete(statement_document).where(statement_document.c.statement_id == wanted)
            )
            conn.execute(insert(statement_document).values(**record))
    log.info("%d statements of batch %d rendered into %s", len(ids), batch_id, folder)
    return RenderedBatch(len(ids), folder)


def _stored(conn: Connection, wanted: str, kind: str) -> bytes | None:
    """The archived document if it is there and unchanged (its SHA-256 as recorded)."""
    row = (
        conn.execute(select(statement_document).where(statement_document.c.statement_id == wanted))
        .mappings()
        .first()
    )
    if row is None:
        return None
    path = Path(row[f"{kind}_path"])
    if not path.is_file():
        return None
    content = path.read_bytes()
    return content if hashlib.sha256(content).hexdigest() == row[f"{kind}_sha256"] else None


def statement_document_bytes(conn: Connection, wanted: str, kind: str) -> bytes | None:
    """A statement's HTML or PDF (kind "html" or "pdf") for the Billing page and the portal:
    the archived copy, else rendered now from the database; None: no such statement. The
    caller decides who may see it."""
    if kind not in (HTML, PDF):
        raise ValueError(f"kind must be {HTML} or {PDF}")
    stored = _stored(conn, wanted, kind)
    if stored is not None:
        return stored
    view = read_statement(conn, wanted)
    if view is None:
        return None
    html = render_html(view)
    return html.encode("utf-8") if kind == HTML else render_pdf(html)
