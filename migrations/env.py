"""Alembic environment: migrates the connection passed in by tufnotary.server.migrate."""

from alembic import context

from tufnotary.server.storage.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with tufnotary.server.migrate.upgrade() / downgrade()")
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
