"""The SQLite backend: see :mod:`sitq.backends.sqlite.backend`; its schema is in ``schema/``."""

from sitq.backends.sqlite.backend import SCHEMA_VERSION, SQLiteBackend

__all__ = ["SCHEMA_VERSION", "SQLiteBackend"]
