"""Running the backend's enqueue statements on a caller's psycopg 3 connection.

A Django or SQLAlchemy application holds a psycopg connection, often inside a transaction of its
own. The statements are those of queries.sql, with PostgreSQL's ``$n`` placeholders, which
psycopg passes to the server as they are through a ``RawCursor`` (psycopg 3.2 or newer). The
notification that wakes workers is sent by the statement itself, so it leaves with the caller's
commit, as on asyncpg.

A sync connection is used from a thread of its own (a psycopg connection serializes its users
with a lock), so the event loop that awaits the insert is never blocked by it.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Sequence
from typing import Any

from sitq.errors import ConfigurationError

ASYNCPG = "asyncpg"
PSYCOPG = "psycopg"
PSYCOPG_ASYNC = "psycopg-async"


def connection_kind(connection: Any, asyncpg: Any) -> tuple[str, Any]:
    """Which driver ``connection`` belongs to, and the connection to run statements on (a
    cursor's connection). ``ConfigurationError`` for anything else, saying what to pass."""
    top = type(connection).__module__.split(".", 1)[0]
    if top == "psycopg":
        psycopg = importlib.import_module("psycopg")
        if not hasattr(psycopg, "RawCursor"):
            raise ConfigurationError(
                f"enqueueing on a psycopg connection needs psycopg 3.2 or newer (installed: "
                f"{getattr(psycopg, '__version__', 'unknown')}): pip install 'psycopg>=3.2'"
            )
        if isinstance(connection, psycopg.Cursor | psycopg.AsyncCursor):
            connection = connection.connection
        if isinstance(connection, psycopg.Connection):
            return PSYCOPG, connection
        if isinstance(connection, psycopg.AsyncConnection):
            return PSYCOPG_ASYNC, connection
    elif isinstance(connection, asyncpg.Connection) or hasattr(connection, "fetch"):
        return ASYNCPG, connection  # a connection, or a pool's proxy of one
    hint = ""
    if top == "psycopg2":
        hint = " (psycopg2 is not supported: use psycopg 3)"
    elif top == "django":
        hint = (
            " (for Django's connection use sitq.contrib.django, or pass "
            "django.db.connection.connection, its psycopg connection)"
        )
    raise ConfigurationError(
        "connection must be an asyncpg connection or a psycopg 3 connection or cursor, not "
        f"{type(connection).__module__}.{type(connection).__name__}{hint}"
    )


def _fetch(connection: Any, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    psycopg = importlib.import_module("psycopg")
    with psycopg.RawCursor(connection) as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall())


async def _fetch_async(connection: Any, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
    psycopg = importlib.import_module("psycopg")
    async with psycopg.AsyncRawCursor(connection) as cursor:
        await cursor.execute(sql, args)
        return list(await cursor.fetchall())


async def fetch(kind: str, connection: Any, sql: str, args: Sequence[Any]) -> list[Any]:
    """Run one statement on a psycopg connection (``kind`` from :func:`connection_kind`) in
    whatever transaction it is in; its rows."""
    if kind == PSYCOPG_ASYNC:
        return await _fetch_async(connection, sql, args)
    return await asyncio.to_thread(_fetch, connection, sql, args)


def errors() -> tuple[type[BaseException], ...]:
    """psycopg's error classes (psycopg is imported: a psycopg connection came in)."""
    psycopg = importlib.import_module("psycopg")
    return (psycopg.Error, OSError)
