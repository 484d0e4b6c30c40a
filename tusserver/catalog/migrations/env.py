"""Alembic environment: always called by tusserver.catalog.migrate with a live connection."""

from alembic import context

from tusserver.catalog.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only reachable through plain `alembic`
    raise RuntimeError("run migrations with `tusserver migrate`, not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
