"""Alembic environment: migrations run on the connection `cdr_billing.migrations` passes in."""

from alembic import context

from cdr_billing.migrations import VERSION_TABLE, include_name
from cdr_billing.schema import metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=True,  # SQLite alters tables by copying them
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
