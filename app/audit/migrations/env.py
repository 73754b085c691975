"""Alembic environment for the audit trail: always run by AuditStore.migrate(), which passes
an open connection (``config.attributes["connection"]``)."""

from __future__ import annotations

from alembic import context

from app.audit.tables import metadata

VERSION_TABLE = "audit_alembic_version"  # its own, so the database can be shared

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
