"""Explicit ids on SQLite: an id is stored once, and stored again only once its result has
expired (what ``enqueue`` and ``put_stored`` both need when an insert found the id taken)."""

from __future__ import annotations

import sqlite3

from sitq.backends._migrations import load_queries

_QUERIES = load_queries(__package__ or "sitq.backends.sqlite", "queries.sql")
_ID_EXPIRES = _QUERIES["id_expires"]
_DROP_EXPIRED_ID = _QUERIES["drop_expired_id"]


def id_is_free(conn: sqlite3.Connection, task_id: str, now: float) -> bool:
    """Whether ``task_id`` can be stored: it is unknown, or its result expired at or before
    ``now`` (its row is then deleted, in the caller's write transaction)."""
    row = conn.execute(_ID_EXPIRES, (task_id,)).fetchone()
    if row is None:
        return True
    return conn.execute(_DROP_EXPIRED_ID, (task_id, now)).rowcount == 1
