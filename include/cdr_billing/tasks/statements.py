"""render_statements and deliver_statements: after the load, the batch's statements as HTML
and PDF in the archive, then mailed to the users of the customers that deliver them."""

from __future__ import annotations

import logging

from cdr_billing import database, statement_mail, statement_render
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import DeliveredStatements, LoadedBatch, RenderedStatements

log = logging.getLogger(__name__)


def render_statements(
    loaded: LoadedBatch, config: PipelineConfig | None = None
) -> RenderedStatements:
    """Render the batch's statements (none when no customer opts in)."""
    config = config or load_config()
    if not config.statements.customers:
        return RenderedStatements(loaded, 0, "")
    engine = database.billing_engine(config.billing.connection)
    rendered = statement_render.render_batch(engine, loaded.batch_id, config.archive_root)
    return RenderedStatements(loaded, rendered.statements, str(rendered.folder))


def deliver_statements(
    rendered: RenderedStatements, config: PipelineConfig | None = None
) -> DeliveredStatements:
    """One delivery pass over the batch's due mails (each mail sent once; deferred ones wait
    for a later pass)."""
    config = config or load_config()
    if not config.statements.customers:
        return DeliveredStatements(rendered, 0, 0, 0, 0, 0)
    engine = database.billing_engine(config.billing.connection)
    done = statement_mail.deliver(
        engine, rendered.batch.batch_id, config.statements, config.smtp_connection
    )
    return DeliveredStatements(
        rendered, done.sent, done.bounced, done.deferred, done.unknown, done.waiting
    )
