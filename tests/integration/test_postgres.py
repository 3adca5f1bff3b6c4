"""PostgreSQL-only behaviour: concurrent migrations, transactional enqueue, a dropped listener."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sitq import AsyncWorker, BackendError, PostgresBackend, TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, drop_postgres_schema, wait_until, with_query
from tests.services import postgres_dsn, require

asyncpg = pytest.importorskip("asyncpg")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    dsn = postgres_dsn()
    require("postgres", dsn)
    schema = "t_" + uuid.uuid4().hex[:16]
    yield with_query(dsn, schema=schema)
    await drop_postgres_schema(dsn, schema)


@contextlib.asynccontextmanager
async def conn_batch(dsn: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


async def test_ten_workers_start_at_once_and_drain_20000_tasks(
    pg_url: str, worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    procs = [worker_processes.start(pg_url, concurrency=10) for _ in range(10)]
    total = 20_000
    async with TaskQueue(pg_url) as queue:
        ids: list[str] = []
        for start in range(0, total, 2000):
            ids += await queue.enqueue_many(
                [(tasks.record_item, (str(tmp_path), "pg", i)) for i in range(start, start + 2000)]
            )

        async def drained() -> bool:
            stats = await queue.stats()
            return sum(s.succeeded for s in stats) == total

        await wait_until(drained, timeout=240, interval=0.5, message="20,000 results")
        assert all(p.poll() is None for p in procs), "every worker came up and is still running"
        stats = {s.queue: s for s in await queue.stats()}["default"]
        assert (stats.pending, stats.running, stats.failed) == (0, 0, 0)
        conn = await asyncpg.connect(postgres_dsn())
        try:
            versions = await conn.fetch(
                f'SELECT version FROM "{_schema(pg_url)}".schema_version ORDER BY version'
            )
        finally:
            await conn.close()
        assert [r["version"] for r in versions] == list(range(1, len(versions) + 1))
        sample = await queue.get_result(ids[-1])
        assert sample is not None and sample.status == TaskStatus.SUCCESS
    items = Counter(int(line.split()[0]) for line in (tmp_path / "pg.log").read_text().splitlines())
    assert items == Counter(range(total)), "every task executed exactly once"


async def test_transactional_enqueue_commit_and_rollback(pg_url: str) -> None:
    async with TaskQueue(pg_url) as queue:
        conn = await asyncpg.connect(postgres_dsn())
        try:
            async with conn.transaction():
                committed = await queue.options(connection=conn).enqueue(tasks.add, 1, 2)
                # Not visible to anyone else until the transaction commits.
                assert await queue.get_status(committed) is None
            transaction = conn.transaction()
            await transaction.start()
            rolled_back = await queue.options(connection=conn).enqueue(tasks.add, 3, 4)
            # A large batch takes the COPY path: it must honour the transaction too.
            batch = await queue.options(connection=conn).enqueue_many([(tasks.add, (1, 1))] * 100)
            await transaction.rollback()
        finally:
            await conn.close()
        assert await queue.get_status(committed) == TaskStatus.PENDING
        assert await queue.get_status(rolled_back) is None
        assert [await queue.get_status(i) for i in batch[:3]] == [None, None, None]
        async with conn_batch(postgres_dsn()) as other:
            async with other.transaction():
                view = queue.options(connection=other, queue="batch")
                kept = await view.enqueue_many([(tasks.add, (2, 2))] * 100)
        assert await queue.get_status(kept[-1]) == TaskStatus.PENDING
        async with AsyncWorker(queue.backend, poll_interval=0.2):
            assert await queue.get_value(committed, timeout=10) == 3
        assert await queue.get_status(rolled_back) is None
        stats = {s.queue: s for s in await queue.stats()}
        assert (stats["default"].succeeded, stats["default"].pending) == (1, 0)
        assert (stats["batch"].succeeded, stats["batch"].pending) == (0, 100)


async def test_transactional_enqueue_is_refused_elsewhere(tmp_path: Path) -> None:
    from sitq import ConfigurationError

    async with TaskQueue(f"sqlite:///{tmp_path / 'q.db'}") as queue:
        with pytest.raises(ConfigurationError, match="PostgresBackend"):
            await queue.options(connection=object()).enqueue(tasks.add, 1, 2)


async def test_worker_survives_its_listening_connection_being_terminated(pg_url: str) -> None:
    schema = _schema(pg_url)
    admin = await asyncpg.connect(postgres_dsn())
    try:
        async with TaskQueue(pg_url) as queue, AsyncWorker(pg_url, poll_interval=0.2):
            assert await queue.get_value(await queue.enqueue(tasks.add, 1, 1), timeout=10) == 2

            async def listeners() -> list[int]:
                rows = await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                    f"sitq-listen:{schema}",
                )
                return [r["pid"] for r in rows]

            await wait_until(lambda: _non_empty(listeners()), message="listening connections")
            before = await listeners()
            for pid in before:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await wait_until(
                lambda: _replaced(listeners(), before, len(before)),
                message="the listening connections to be re-established",
            )
            for i in range(5):
                task_id = await queue.enqueue(tasks.add, i, i)
                assert await queue.get_value(task_id, timeout=10) == 2 * i
    finally:
        await admin.close()


async def _non_empty(pids: asyncio.Future[list[int]] | object) -> bool:
    return bool(await pids)  # type: ignore[misc]


async def _replaced(pids: object, before: list[int], count: int) -> bool:
    now = await pids  # type: ignore[misc]
    return len(now) == count and not set(now) & set(before)


async def test_connection_failure_is_a_backend_error_with_the_server_message() -> None:
    dsn = postgres_dsn()
    require("postgres", dsn)
    bad = dsn.rsplit("/", 1)[0] + "/no_such_database_sitq"
    with pytest.raises(BackendError, match="no_such_database_sitq"):
        await PostgresBackend(bad).connect()
    backend = PostgresBackend(dsn)
    with pytest.raises(BackendError, match="not connected"):
        await backend.get_task("x")


async def test_worker_recovers_when_every_connection_is_terminated(
    pg_url: str, worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    """All of the worker's connections are killed server-side mid-drain; it reconnects and
    every task still ends with exactly one result."""
    schema = _schema(pg_url)
    worker_processes.start(pg_url, concurrency=4, lease=5.0)
    admin = await asyncpg.connect(postgres_dsn())
    try:
        async with TaskQueue(pg_url) as queue:
            ids = await queue.enqueue_many(
                [(tasks.record_item, (str(tmp_path), "cut", i)) for i in range(200)]
            )
        await wait_until(lambda: (tmp_path / "cut.log").exists(), message="work started")
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name IN ($1, $2)",
            f"sitq:{schema}",
            f"sitq-listen:{schema}",
        )
        assert killed >= 2
        async with TaskQueue(pg_url) as queue:
            more = await queue.enqueue_many(
                [(tasks.record_item, (str(tmp_path), "cut", i)) for i in range(200, 300)]
            )
            results = [await queue.get_result(i, timeout=60) for i in ids + more]
        assert all(r is not None and r.status == TaskStatus.SUCCESS for r in results)
        lines = (tmp_path / "cut.log").read_text().split()
        assert set(int(item) for item in lines[0::2]) == set(range(300))
    finally:
        await admin.close()
