"""The audit trail (issue 12): who classified what, with which model version, when.

- tables.py: the schema (one hash-chained table); migrations/: Alembic, run on start;
- chain.py: record hashes and chain verification;
- store.py: SQLite (WAL, embedded default) or PostgreSQL through SQLAlchemy;
- writer.py: the batching writer thread (group commit);
- trail.py: per-request drafts, failure policy, health and metrics;
- api.py: the classify-router dependency and GET /v1/audit;
- cli.py: ``python -m app.audit verify|export|purge``.
"""
