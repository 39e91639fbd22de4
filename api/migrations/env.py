"""Alembic environment: runs on the connection the API hands over (``attributes``)."""

from __future__ import annotations

from alembic import context

from gridpatrol.api.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("migrations run through gridpatrol.api.db.Database.migrate()")
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
