"""PostgreSQL-only behaviour: concurrent migrations, transactional enqueue, a dropped listener,
concurrency keys under contention between connections."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sitq import (
    AsyncWorker,
    BackendError,
    ConfigurationError,
    PostgresBackend,
    TaskQueue,
    TaskStatus,
)
from sitq.models import (
    CancelOutcome,
    Claim,
    ClaimRef,
    Finish,
    LeaseState,
    NewTask,
    Progress,
    Release,
)
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, drop_postgres_schema, wait_until, with_query
from tests.services import postgres_dsn, require, require_module

asyncpg = require_module("asyncpg")


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


async def test_transactional_enqueue_on_a_psycopg_connection(pg_url: str) -> None:
    """A psycopg 3 connection (sync or async) or cursor takes the same rows as an asyncpg one:
    in the caller's transaction, with the workers woken at its commit and not before."""
    psycopg = require_module("psycopg")
    channel = f"sitq_work_{_schema(pg_url)}"
    heard: list[str] = []
    async with TaskQueue(pg_url) as queue, conn_batch(postgres_dsn()) as listener:
        await listener.add_listener(channel, lambda *args: heard.append(args[-1]))
        with psycopg.connect(postgres_dsn()) as conn:
            with conn.transaction():
                committed = await queue.options(connection=conn).enqueue(tasks.add, 1, 2)
                view = queue.options(connection=conn.cursor(), queue="batch")
                batch = await view.enqueue_many([(tasks.add, (2, 2))] * 100)
                named = queue.options(connection=conn, task_id="psycopg-named")
                assert await named.enqueue(tasks.add, 3, 3) == "psycopg-named"
                assert await named.enqueue(tasks.add, 4, 4) == "psycopg-named"
                # In the transaction, and nowhere else yet: no one has heard of it either.
                row = conn.execute(
                    f'SELECT count(*) FROM "{_schema(pg_url)}".tasks WHERE id = %s', [committed]
                ).fetchone()
                assert row == (1,)
                assert await queue.get_status(committed) is None
                await listener.execute("SELECT 1")
                assert heard == []
            await wait_until(lambda: sorted(heard) == ["batch", "default"], message="NOTIFY")
            with conn.transaction():
                rolled_back = await queue.options(connection=conn).enqueue(tasks.add, 5, 5)
                dropped = await queue.options(connection=conn).enqueue_many(
                    [(tasks.add, (1, 1))] * 3
                )
                raise psycopg.Rollback()
        assert await queue.get_status(rolled_back) is None
        assert [await queue.get_status(i) for i in dropped] == [None] * 3
        assert await queue.get_status(batch[-1]) == TaskStatus.PENDING

        async with await psycopg.AsyncConnection.connect(postgres_dsn()) as aconn:
            async with aconn.transaction():
                from_async = await queue.options(connection=aconn).enqueue(tasks.add, 6, 6)
            async with aconn.cursor() as cursor, aconn.transaction():
                failed = await queue.options(connection=cursor).enqueue(tasks.add, 7, 7)
                raise psycopg.Rollback()
        assert await queue.get_status(failed) is None
        async with AsyncWorker(queue.backend, poll_interval=0.2, queues=["default"]):
            assert await queue.get_value(committed, timeout=10) == 3
            assert await queue.get_value("psycopg-named", timeout=10) == 6
            assert await queue.get_value(from_async, timeout=10) == 12
        stats = {s.queue: s for s in await queue.stats()}
        assert (stats["default"].succeeded, stats["default"].pending) == (3, 0)
        assert stats["batch"].pending == 100


async def test_a_failed_psycopg_transaction_is_a_backend_error(pg_url: str) -> None:
    psycopg = require_module("psycopg")
    async with TaskQueue(pg_url) as queue:
        with psycopg.connect(postgres_dsn()) as conn:
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            with pytest.raises(BackendError, match="InFailedSqlTransaction"):
                await queue.options(connection=conn).enqueue(tasks.add, 1, 1)
        with pytest.raises(BackendError, match="closed"):
            await queue.options(connection=conn).enqueue(tasks.add, 1, 1)
        with pytest.raises(ConfigurationError, match="asyncpg connection or a psycopg 3"):
            await queue.options(connection=object()).enqueue(tasks.add, 1, 1)
        assert await queue.stats() == []


async def test_transactional_enqueue_is_refused_elsewhere(tmp_path: Path) -> None:
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


# -- concurrency keys, cron storage, locks --------------------------------------------------


def _new(
    task_id: str,
    queue: str = "q",
    key: str | None = None,
    limit: int | None = None,
    priority: int = 0,
    delay: float = 0.0,
) -> NewTask:
    now = time.time()
    return NewTask(
        id=task_id,
        queue=queue,
        payload=b"-",
        options="{}",
        priority=priority,
        eta=now + delay,
        enqueued_at=now,
        result_ttl=60,
        concurrency_key=key,
        concurrency_limit=limit,
    )


def _done(claim: Claim) -> Finish:
    now = time.time()
    return Finish(
        claim.ref,
        TaskStatus.SUCCESS,
        None,
        None,
        None,
        now,
        now + 60,
    )


@contextlib.asynccontextmanager
async def _backends(url: str, n: int) -> AsyncIterator[list[PostgresBackend]]:
    made = [PostgresBackend.from_url(url) for _ in range(n)]
    try:
        for backend in made:
            await backend.connect()
        yield made
    finally:
        for backend in made:
            await backend.close()


class _RunningMonitor:
    """Samples, on a connection of its own, how many keyed tasks run under an unexpired lease
    per (queue, key): each sample is one snapshot, so it sees the limit exactly as committed."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.peak: Counter[tuple[str, str]] = Counter()
        self.samples = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        conn = await asyncpg.connect(postgres_dsn())
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(
                    f'SELECT queue, concurrency_key, count(*) AS n FROM "{self.schema}".tasks '
                    "WHERE state = 1 AND concurrency_key IS NOT NULL "
                    "AND lease_until > extract(epoch FROM clock_timestamp()) GROUP BY 1, 2"
                )
                for r in rows:
                    key = (r["queue"], r["concurrency_key"])
                    self.peak[key] = max(self.peak[key], r["n"])
                self.samples += 1
        finally:
            await conn.close()

    def stop(self) -> None:
        self._stop.set()


async def _hammer(
    backend: PostgresBackend,
    queues: list[str],
    name: str,
    finished: set[str],
    total: int,
    running: Counter[tuple[str, str]],
    peak: Counter[tuple[str, str]],
    keys: dict[str, tuple[str, str]],
    rng: random.Random,
) -> None:
    """Claim, hold briefly, settle (mostly finish, sometimes release) until all are done."""
    while len(finished) < total:
        claims = await backend.claim(queues, rng.randint(1, 4), name, 30)
        held = [keys[c.task_id] for c in claims if c.task_id in keys]
        # Counted from the claim's return to just before its settlement is sent: inside the
        # interval in which the database counts it, so this can only under-count.
        for k in held:
            running[k] += 1
            peak[k] = max(peak[k], running[k])
        if claims:
            await asyncio.sleep(rng.uniform(0, 0.004))  # the "work"
        for k in held:
            running[k] -= 1
        settlements: list[Finish | Release] = []
        for c in claims:
            if rng.random() < 0.1:
                settlements.append(Release(c.ref))
            else:
                settlements.append(_done(c))
        if settlements:
            applied = await backend.settle(settlements)
            assert all(applied)
            finished.update(s.claim.task_id for s in settlements if isinstance(s, Finish))
        else:
            await backend.wait_for_work(queues, 0.5)


async def test_eight_claimers_on_one_key_never_exceed_its_limit(pg_url: str) -> None:
    """8 claimers on separate connections race for 200 tasks of one key (limit 3), settling as
    they go; 40 unkeyed tasks are mixed in. The limit holds in every snapshot of the table."""
    keyed = [_new(f"k{i}", key="tenant-7", limit=3) for i in range(200)]
    plain = [_new(f"p{i}") for i in range(40)]
    keys = {t.id: ("q", "tenant-7") for t in keyed}
    monitor = _RunningMonitor(_schema(pg_url))
    running: Counter[tuple[str, str]] = Counter()
    peak: Counter[tuple[str, str]] = Counter()
    finished: set[str] = set()
    async with _backends(pg_url, 8) as clients:
        await clients[0].enqueue(keyed[:100] + plain + keyed[100:])
        watching = asyncio.create_task(monitor.run())
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        _hammer(
                            b, ["q"], f"w{i}", finished, 240, running, peak, keys, random.Random(i)
                        )
                        for i, b in enumerate(clients)
                    )
                ),
                timeout=120,
            )
        finally:
            monitor.stop()
            await watching
        stats = {s.queue: s for s in await clients[0].stats(time.time())}["q"]
    assert (stats.succeeded, stats.pending, stats.running) == (240, 0, 0)
    assert monitor.samples > 0
    assert monitor.peak[("q", "tenant-7")] <= 3
    assert peak[("q", "tenant-7")] == 3, "the claimers did reach the limit"


async def test_many_keys_on_two_queues_under_contention(pg_url: str) -> None:
    """Claimers on two queues race for tasks of eight keys with different limits (the same key
    names on both queues, counted apart) and random priorities: every per-queue limit holds,
    every task finishes, and the key locks taken in a claim never deadlock."""
    rng = random.Random(7)
    limits = {f"key-{n}": 1 + n % 3 for n in range(8)}
    tasks_: list[NewTask] = []
    keys: dict[str, tuple[str, str]] = {}
    for i in range(400):
        queue = "a" if i % 2 else "b"
        if i % 5 == 0:
            tasks_.append(_new(f"t{i}", queue=queue, priority=rng.randint(0, 3)))
            continue
        key = rng.choice(sorted(limits))
        tasks_.append(_new(f"t{i}", queue, key, limits[key], rng.randint(0, 3)))
        keys[f"t{i}"] = (queue, key)
    monitor = _RunningMonitor(_schema(pg_url))
    running: Counter[tuple[str, str]] = Counter()
    peak: Counter[tuple[str, str]] = Counter()
    finished: set[str] = set()
    async with _backends(pg_url, 6) as clients:
        await clients[0].enqueue(tasks_)
        watching = asyncio.create_task(monitor.run())
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        _hammer(
                            b,
                            ["a", "b"] if i % 2 else ["b", "a"],
                            f"w{i}",
                            finished,
                            400,
                            running,
                            peak,
                            keys,
                            random.Random(i),
                        )
                        for i, b in enumerate(clients)
                    )
                ),
                timeout=120,
            )
        finally:
            monitor.stop()
            await watching
    assert len(finished) == 400
    for (queue, key), n in {**monitor.peak, **peak}.items():
        assert n <= limits[key], f"{queue}/{key} ran {n} at once, limit {limits[key]}"


async def test_a_long_backlog_of_a_full_key_does_not_hide_other_keys(pg_url: str) -> None:
    """More blocked tasks of a full key than a claim scans in order (it then visits each key
    once): tasks of other keys and unkeyed ones behind them are still claimed at once."""
    async with _backends(pg_url, 1) as (backend,):
        await backend.enqueue([_new(f"hot{i}", key="hot", limit=1) for i in range(700)])
        # "cold" is first in its key's order with a later ETA: its due task behind it counts.
        await backend.enqueue(
            [
                _new("cold-later", key="cold", limit=1, priority=5, delay=3600),
                _new("cold", key="cold", limit=1),
                _new("plain"),
            ]
        )
        (first,) = await backend.claim(["q"], 1, "w", 30)
        assert first.task_id == "hot0"
        claimed = await backend.claim(["q"], 5, "w", 30)
        assert sorted(c.task_id for c in claimed) == ["cold", "plain"]
        assert await backend.claim(["q"], 5, "w", 30) == []
        assert await backend.settle([_done(first)]) == [True]
        (nxt,) = await backend.claim(["q"], 5, "w", 30)
        assert nxt.task_id == "hot1"


async def test_an_expired_keyed_lease_cannot_be_extended(pg_url: str) -> None:
    """Once a keyed task's lease has run out its slot is free for another task, so its old
    worker may not revive the lease (an unkeyed task's lease may be, until reclaimed)."""
    async with _backends(pg_url, 1) as (backend,):
        await backend.enqueue([_new("keyed", key="k", limit=1), _new("plain")])
        claims = await backend.claim(["q"], 5, "w", 0.3)
        assert sorted(c.task_id for c in claims) == ["keyed", "plain"]
        refs = [c.ref for c in sorted(claims, key=_id)]

        async with conn_batch(postgres_dsn()) as conn:

            async def expired() -> bool:
                return bool(
                    await conn.fetchval(
                        f"SELECT bool_and(lease_until <= extract(epoch FROM clock_timestamp())) "
                        f'FROM "{_schema(pg_url)}".tasks'
                    )
                )

            await wait_until(expired, timeout=10, message="both leases to run out")
        assert await backend.extend_lease(refs[:1], 30) == [LeaseState.LOST]
        assert await backend.extend_lease(refs[1:], 30) == [LeaseState.HELD]


def _id(claim: Claim) -> str:
    return claim.task_id


async def test_schema_version_1_is_migrated_with_its_tasks(pg_url: str) -> None:
    """A schema made by the first release (version 1, with a task in it) gains the cron, lock
    and key tables and indexes on connect, and its task is still claimed."""
    schema = _schema(pg_url)
    from sitq.backends._migrations import with_schema
    from sitq.backends.postgres.backend import _MIGRATIONS

    async with conn_batch(postgres_dsn()) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(
            f'CREATE TABLE "{schema}".schema_version ('
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(with_schema(_MIGRATIONS.steps[0].sql, schema))
        await conn.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES (1)')
        await conn.execute(
            f'INSERT INTO "{schema}".tasks (id, queue, priority, payload, options, result_ttl) '
            "VALUES ('old', 'q', 0, '\\x00', '{}', 60)"
        )
    async with _backends(pg_url, 1) as (backend,):
        (claim,) = await backend.claim(["q"], 5, "w", 30)
        assert claim.task_id == "old"
        await backend.put_cron("c", b"d", 60.0)
        assert await backend.acquire_lock("l", "t", 30)
    async with conn_batch(postgres_dsn()) as conn:
        versions = await conn.fetch(f'SELECT version FROM "{schema}".schema_version')
    assert sorted(r["version"] for r in versions) == list(range(1, _MIGRATIONS.latest + 1))


async def test_lock_ttl_uses_the_server_clock(pg_url: str) -> None:
    """The lock row's expiry is the server's now() plus the TTL, whatever the client's clock."""
    async with _backends(pg_url, 1) as (backend,):
        assert await backend.acquire_lock("clock", "t", 100)
        async with conn_batch(postgres_dsn()) as conn:
            left = await conn.fetchval(
                "SELECT extract(epoch FROM expires_at - now()) "
                f'FROM "{_schema(pg_url)}".locks WHERE name = $1',
                "clock",
            )
    assert 90 < left <= 100


async def test_enqueueing_an_id_while_it_finishes_does_not_run_it_again(pg_url: str) -> None:
    """An explicit id enqueued while that task's finish is committing (a cron tick enqueued by
    a late worker) must see the result and store nothing, although its statement started
    before the finish committed (it waits on the row the finish deletes)."""
    schema = _schema(pg_url)
    async with _backends(pg_url, 1) as (backend,):
        await backend.enqueue([_new("tick")])
        (claim,) = await backend.claim(["q"], 1, "w", 30)
        async with conn_batch(postgres_dsn()) as conn:
            transaction = conn.transaction()
            await transaction.start()
            # What settle's finish does, held open: the row leaves tasks with its result.
            await conn.execute(
                f'WITH m AS (DELETE FROM "{schema}".tasks WHERE id = $1 RETURNING *) '
                f'INSERT INTO "{schema}".results (id, queue, status, attempts, enqueued_at, '
                "eta, started_at, finished_at, expires_at) "
                "SELECT id, queue, 2, attempts, enqueued_at, eta, started_at, "
                "extract(epoch FROM now()), extract(epoch FROM now()) + 60 FROM m",
                claim.task_id,
            )
            again = asyncio.create_task(backend.enqueue([_new("tick")]))

            async def waiting() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                        "AND wait_event_type = 'Lock'",
                        f"sitq:{schema}",
                    )
                )

            try:
                await wait_until(waiting, message="the enqueue to wait for the finish")
            finally:
                await transaction.commit()
            assert await again == [False]
        snap = await backend.get_task("tick")
        assert snap is not None and snap.status is TaskStatus.SUCCESS
        assert await backend.claim(["q"], 1, "w", 30) == []


async def _cancel_while_row_is_held(
    pg_url: str, hold_sql: str, *, claim_first: bool, expect: CancelOutcome
) -> PostgresBackend:
    """Run ``hold_sql`` on the task "t" in an open transaction, start a cancel of "t" that
    waits for the row, commit, and check the cancel's outcome; the backend stays open."""
    schema = _schema(pg_url)
    backend = PostgresBackend.from_url(pg_url)
    await backend.connect()
    try:
        await backend.enqueue([_new("t")])
        if claim_first:
            await backend.claim(["q"], 1, "w", 30)
        async with conn_batch(postgres_dsn()) as conn:
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute(hold_sql.format(s=f'"{schema}"'), "t")
            cancel = asyncio.create_task(backend.cancel("t", time.time()))

            async def waiting() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                        "AND wait_event_type = 'Lock'",
                        f"sitq:{schema}",
                    )
                )

            try:
                await wait_until(waiting, message="the cancel to wait for the row")
            finally:
                await transaction.commit()
            assert await cancel is expect
    except BaseException:
        await backend.close()
        raise
    return backend


async def test_cancel_waiting_on_a_finish_answers_already_finished(pg_url: str) -> None:
    """A cancel whose statement began while the task was running and waits for the finish
    that moves the row to results must report the finish, not an unknown id: the result is
    not in its statement's snapshot."""
    backend = await _cancel_while_row_is_held(
        pg_url,
        # What settle's finish does, held open: the row leaves tasks with its result.
        "WITH m AS (DELETE FROM {s}.tasks WHERE id = $1 RETURNING *) "
        "INSERT INTO {s}.results (id, queue, status, attempts, enqueued_at, eta, started_at, "
        "finished_at, expires_at) SELECT id, queue, 2, attempts, enqueued_at, eta, started_at, "
        "extract(epoch FROM now()), extract(epoch FROM now()) + 60 FROM m",
        claim_first=True,
        expect=CancelOutcome.ALREADY_FINISHED,
    )
    try:
        snap = await backend.get_task("t")
        assert snap is not None and snap.status is TaskStatus.SUCCESS
        assert await backend.cancel("t", time.time()) is CancelOutcome.ALREADY_FINISHED
    finally:
        await backend.close()


async def test_cancel_waiting_on_a_claim_flags_the_running_task(pg_url: str) -> None:
    """A cancel whose statement began while the task was pending and waits for a claim of it
    must flag the now running task (the claim's worker sees it at its next heartbeat)."""
    backend = await _cancel_while_row_is_held(
        pg_url,
        # What a claim does to the row, held open.
        "UPDATE {s}.tasks SET state = 1, attempts = attempts + 1, fence = fence + 1, "
        "lease_until = extract(epoch FROM now()) + 30, worker_id = 'w', "
        "started_at = extract(epoch FROM now()) WHERE id = $1",
        claim_first=False,
        expect=CancelOutcome.REQUESTED,
    )
    try:
        snap = await backend.get_task("t")
        assert snap is not None and snap.status is TaskStatus.RUNNING
        # The claim's worker learns of the cancel at its next heartbeat.
        assert await backend.extend_lease([ClaimRef("t", 1)], 30) == [LeaseState.CANCEL_REQUESTED]
    finally:
        await backend.close()


def _failed(claim: Claim) -> Finish:
    now = time.time()
    return Finish(
        claim=claim.ref,
        status=TaskStatus.FAILED,
        value=None,
        error="ValueError: x",
        traceback=None,
        finished_at=now,
        expires_at=now + 60,
    )


async def test_requeue_wakes_the_workers_of_the_task_queue(pg_url: str) -> None:
    """A requeue notifies the work channel with the task's queue, as an enqueue does, so an
    idle worker claims it at once rather than at its next fallback poll."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    async with _backends(pg_url, 1) as (backend,), conn_batch(postgres_dsn()) as conn:
        await backend.enqueue([_new("t", queue="rq")])
        (claim,) = await backend.claim(["rq"], 1, "w", 30)
        assert await backend.settle([_failed(claim)]) == [True]
        await conn.add_listener(
            f"sitq_work_{_schema(pg_url)}", lambda *args: heard.put_nowait(args[3])
        )
        await backend.enqueue([_new("other", queue="elsewhere")])
        assert await asyncio.wait_for(heard.get(), 10) == "elsewhere"
        assert [o.value for o in await backend.requeue(["t"], time.time())] == ["requeued"]
        assert await asyncio.wait_for(heard.get(), 10) == "rq"


async def test_a_claim_from_before_a_requeue_stays_stale(pg_url: str) -> None:
    """A requeued task's fencing tokens go on from where they were: a worker that lost its
    claim before the task failed cannot extend, progress or settle a claim after the requeue."""
    async with _backends(pg_url, 1) as (backend,):
        await backend.enqueue([_new("t")])
        (lost,) = await backend.claim(["q"], 1, "w1", 0.05)
        async with conn_batch(postgres_dsn()) as conn:

            async def expired() -> bool:
                return bool(
                    await conn.fetchval(
                        "SELECT lease_until <= extract(epoch FROM clock_timestamp()) "
                        f'FROM "{_schema(pg_url)}".tasks WHERE id = $1',
                        "t",
                    )
                )

            await wait_until(expired, timeout=10, message="the first lease to run out")
        (second,) = await backend.claim(["q"], 1, "w2", 30)
        assert await backend.settle([_failed(second)]) == [True]
        assert [o.value for o in await backend.requeue(["t"], time.time())] == ["requeued"]
        (third,) = await backend.claim(["q"], 1, "w3", 30)
        assert third.fencing_token > second.fencing_token > lost.fencing_token
        assert await backend.extend_lease([lost.ref], 30) == [LeaseState.LOST]
        await backend.save_progress([Progress(lost.ref, 0.9, "stale")])
        snap = await backend.get_task("t")
        assert snap is not None and (snap.progress, snap.progress_message) == (None, None)
        await backend.save_progress([Progress(third.ref, 0.5, "half")])
        assert await backend.settle([Release(lost.ref)]) == [False]
        snap = await backend.get_task("t")
        assert snap is not None and snap.worker_id == "w3" and snap.attempts == 1
        assert (snap.progress, snap.progress_message) == (0.5, "half")
