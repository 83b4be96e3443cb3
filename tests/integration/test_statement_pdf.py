"""A statement's PDF, printed from the page's HTML: its text (read back with pypdf) holds the
totals and the masked numbers, never a full number; no URL is fetched."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pypdf import PdfReader
from sqlalchemy import create_engine, select
from statement_seed import FULL_NUMBERS, batch

from cdr_billing import load, statement_render
from cdr_billing.migrations import upgrade
from cdr_billing.schema import statement, statement_document


@pytest.fixture
def loaded(postgres, tmp_path):
    engine = create_engine(postgres.url_of(postgres.create_database("statement_pdf")))
    upgrade(engine)
    result = load.load_month(engine, "2026-05", "run-pdf", batch("run-pdf"), {})
    return engine, result.batch_id


def _text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)


def test_the_pdf_holds_the_totals_and_masked_numbers_only(loaded, tmp_path):
    engine, batch_id = loaded
    rendered = statement_render.render_batch(engine, batch_id, tmp_path / "archive")
    assert rendered.statements == 3
    with engine.connect() as conn:
        u1 = conn.execute(
            select(statement.c.statement_id).where(statement.c.user_id == "u1")
        ).scalar_one()
        document = (
            conn.execute(select(statement_document).where(statement_document.c.statement_id == u1))
            .mappings()
            .one()
        )
        served = statement_render.statement_document_bytes(conn, u1, "pdf")
    pdf = Path(document["pdf_path"]).read_bytes()
    assert pdf.startswith(b"%PDF") and served == pdf
    text = _text(pdf)
    assert "1.92 EUR" in text  # 1.55 + 0.37
    assert "1.55 EUR" in text and "0.37 EUR" in text
    assert "+46701234xxx" in text and "+4420794xxx" in text
    assert "Sweden mobile" in text and "UK London" in text
    assert not any(number in text.replace(" ", "") for number in FULL_NUMBERS)
    assert "2026-05-02 00:30:00" in text  # 22:30 UTC on 1 May, in Stockholm
    assert "2026-05-01 to 2026-05-31" in text  # the period as a reader counts it, last day included
    html = Path(document["html_path"]).read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html


def test_a_statement_asking_for_a_url_is_refused():
    with pytest.raises(statement_render.RefusedUrl, match="example.com"):
        statement_render.render_pdf('<img src="https://example.com/x.png"><p>x</p>')
