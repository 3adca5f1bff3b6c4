"""A store made by each earlier schema version, with a task in it, is upgraded on connect to
exactly the schema a fresh store gets (tables, columns, indexes, functions), and its task runs.

The old store is built from the migration files themselves, up to the version under test; its
task's payload is one the current code serialized (the payload format is not versioned)."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sitq import AsyncWorker, TaskQueue
from sitq.backends._migrations import with_schema
from sitq.backends.postgres.backend import _MIGRATIONS as PG_MIGRATIONS
from sitq.backends.sqlite.backend import _MIGRATIONS as SQLITE_MIGRATIONS
from tests.conformance import tasks
from tests.conftest import drop_postgres_schema, with_query
from tests.services import postgres_dsn, require, require_module

# -- SQLite ---------------------------------------------------------------------------------


def _sqlite_schema(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        master = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()
        columns = {
            name: conn.execute(f"PRAGMA table_xinfo({name})").fetchall()
            for (kind, name, _, _) in master
            if kind == "table"
        }
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    return {"master": master, "columns": columns, "version": version}


@pytest.mark.parametrize("version", range(1, SQLITE_MIGRATIONS.latest))
async def test_sqlite_store_is_upgraded_to_the_fresh_schema(tmp_path: Path, version: int) -> None:
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    async with TaskQueue(f"sqlite:///{fresh}") as queue:
        template = await queue.enqueue(tasks.add, 2, 3)
    conn = sqlite3.connect(fresh)
    payload, options = conn.execute(
        "SELECT payload, options FROM sitq_tasks WHERE id = ?", (template,)
    ).fetchone()
    conn.close()

    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for step in SQLITE_MIGRATIONS.steps[:version]:
        conn.executescript(step.sql)
    conn.execute(f"PRAGMA user_version={version}")
    conn.execute(
        "INSERT INTO sitq_tasks (id, queue, state, priority, eta, payload, options, enqueued_at,"
        " result_ttl) VALUES ('old', 'default', 0, 0, 0, ?, ?, 0, 3600)",
        (payload, options),
    )
    # A failure the old version kept with its payload: listed and requeued after the upgrade.
    conn.execute(
        "INSERT INTO sitq_tasks (id, queue, state, priority, eta, payload, options, enqueued_at,"
        " result_ttl, attempts, finished_at, expires_at, error)"
        " VALUES ('old-failed', 'default', 3, 0, 0, ?, ?, 0, 3600, 1, ?, ?, 'boom')",
        (payload, options, time.time(), time.time() + 3600),
    )
    conn.close()
    assert _sqlite_schema(old) != _sqlite_schema(fresh)

    async with TaskQueue(f"sqlite:///{old}") as queue:
        assert _sqlite_schema(old) == _sqlite_schema(fresh)
        failed = await queue.list_tasks(status="failed")
        assert [(i.task_id, i.function, i.error) for i in failed.tasks] == [
            ("old-failed", "", "boom")
        ]
        assert await queue.requeue("old-failed")
        async with AsyncWorker(queue.backend, poll_interval=0.2):
            assert await queue.get_value("old", timeout=20) == 5
            assert await queue.get_value("old-failed", timeout=20) == 5


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
async def pg_schemas() -> AsyncIterator[tuple[str, str]]:
    dsn = postgres_dsn()
    require("postgres", dsn)
    names = ("m_" + uuid.uuid4().hex[:16], "m_" + uuid.uuid4().hex[:16])
    yield names
    for name in names:
        await drop_postgres_schema(dsn, name)


async def _pg_schema(conn: Any, schema: str) -> dict[str, Any]:
    def plain(text: str | None) -> str | None:
        return None if text is None else text.replace(schema, "<schema>")

    columns = await conn.fetch(
        "SELECT table_name, column_name, ordinal_position, data_type, is_nullable,"
        " column_default, is_identity FROM information_schema.columns WHERE table_schema = $1"
        " ORDER BY table_name, ordinal_position",
        schema,
    )
    indexes = await conn.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname",
        schema,
    )
    functions = await conn.fetch(
        "SELECT p.proname, pg_get_functiondef(p.oid) AS def FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1"
        " ORDER BY p.proname",
        schema,
    )
    versions = await conn.fetch(f'SELECT version FROM "{schema}".schema_version ORDER BY version')
    return {
        "columns": [tuple(r.values()) for r in columns],
        "indexes": [(r["indexname"], plain(r["indexdef"])) for r in indexes],
        "functions": [(r["proname"], plain(r["def"])) for r in functions],
        "versions": [r["version"] for r in versions],
    }


@pytest.mark.parametrize("version", range(1, PG_MIGRATIONS.latest))
async def test_postgres_store_is_upgraded_to_the_fresh_schema(
    pg_schemas: tuple[str, str], version: int
) -> None:
    asyncpg = require_module("asyncpg")
    dsn = postgres_dsn()
    fresh, old = pg_schemas
    async with TaskQueue(with_query(dsn, schema=fresh)) as queue:
        template = await queue.enqueue(tasks.add, 2, 3)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f'SELECT payload, options FROM "{fresh}".tasks WHERE id = $1', template
        )
        async with conn.transaction():
            await conn.execute(f'CREATE SCHEMA "{old}"')
            await conn.execute(
                f'CREATE TABLE "{old}".schema_version (version integer PRIMARY KEY,'
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for step in PG_MIGRATIONS.steps[:version]:
                await conn.execute(with_schema(step.sql, old))
                await conn.execute(
                    f'INSERT INTO "{old}".schema_version (version) VALUES ($1)', step.version
                )
            await conn.execute(
                f'INSERT INTO "{old}".tasks (id, queue, priority, payload, options, result_ttl)'
                " VALUES ('old', 'default', 0, $1, $2, 3600)",
                row["payload"],
                row["options"],
            )
            # A task whose worker was lost (its lease long expired) and a failed result.
            await conn.execute(
                f'INSERT INTO "{old}".tasks (id, queue, state, priority, payload, options,'
                " result_ttl, attempts, fence, lease_until, worker_id, started_at)"
                " VALUES ('old-running', 'default', 1, 0, $1, $2, 3600, 1, 1, 0, 'lost', 0)",
                row["payload"],
                row["options"],
            )
            await conn.execute(
                f'INSERT INTO "{old}".results (id, queue, status, attempts, enqueued_at, eta,'
                " finished_at, expires_at, error) VALUES ('old-failed', 'default', 3, 1, 0, 0,"
                " 1, 'Infinity', 'ValueError: before')"
            )
        assert await _pg_schema(conn, old) != await _pg_schema(conn, fresh)

        async with TaskQueue(with_query(dsn, schema=old)) as queue:
            assert await _pg_schema(conn, old) == await _pg_schema(conn, fresh)
            listed = (await queue.list_tasks(status="failed")).tasks
            assert [(i.task_id, i.function, i.error) for i in listed] == [
                ("old-failed", "", "ValueError: before")
            ]
            # Stored before results kept payloads: it cannot run again.
            assert await queue.requeue("old-failed") is False
            async with AsyncWorker(queue.backend, poll_interval=0.2):
                assert await queue.get_value("old", timeout=20) == 5
                assert await queue.get_value("old-running", timeout=20) == 5
            info = await queue.get_task("old-running")
            assert info is not None and info.attempts == 2 and info.worker_id is None
    finally:
        await conn.close()
