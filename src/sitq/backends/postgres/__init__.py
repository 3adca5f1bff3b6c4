"""The PostgreSQL backend: see :mod:`sitq.backends.postgres.backend`; its schema migrations are
in ``migrations/`` and its statements in ``queries.sql``."""

from sitq.backends.postgres.backend import PostgresBackend

__all__ = ["PostgresBackend"]
