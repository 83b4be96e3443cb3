"""Alembic environment: migrations run on the connection `cdr_billing.migrations` passes in."""

from alembic import context

from cdr_billing.migrations import VERSION_TABLE
from cdr_billing.schema import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
