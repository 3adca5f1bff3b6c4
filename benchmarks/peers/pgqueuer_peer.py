"""PgQueuer: async tasks on PostgreSQL (asyncpg), ``PgQueuer.run(max_concurrent_tasks=10)``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
from pgqueuer import PgQueuer, Queries
from pgqueuer.core.completion import CompletionWatcher
from pgqueuer.db import AsyncpgDriver

from benchmarks.peers import _common as c
from benchmarks.peers import tasks


async def connect(schema: str) -> Any:
    return await asyncpg.connect(c.POSTGRES_DSN, server_settings={"search_path": schema})


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """What ``pgq run factory --max-concurrent-tasks 10 --batch-size 5`` runs: one asyncpg
    connection, ``run(batch_size=5, max_concurrent_tasks=10)``, on
    uvloop as that command picks it where installed."""

    async def main() -> None:
        pgq = PgQueuer.from_asyncpg_connection(await connect(config["schema"]))
        pgq.entrypoint("noop")(tasks.pgqueuer_noop)
        pgq.entrypoint("sleep")(tasks.pgqueuer_sleep)
        # Its concurrency setting, max_concurrent_tasks, must be at least twice batch_size.
        await pgq.run(batch_size=c.CONCURRENCY // 2, max_concurrent_tasks=c.CONCURRENCY)

    return lambda: c.run_uvloop_if_installed(main())


class PgQueuerPostgres:
    name = "pgqueuer"
    backend = "postgres"
    notes = (
        "concurrency through max_concurrent_tasks=10, which must be at least twice "
        "batch_size, so batch_size=5 (default 10; without the cap it takes batch after "
        "batch, with no limit on tasks running at once); finished jobs are written in "
        "batches (every 0.1 s or batch_size jobs); "
        "no result storage: CompletionWatcher (LISTEN/NOTIFY, debounce given 1 ms) waits "
        "for the status; enqueue_many = enqueue(lists) (one INSERT); "
        "a job of a worker that died is re-picked after heartbeat_timeout (30 s)"
    )

    @asynccontextmanager
    async def _queries(self) -> AsyncIterator[tuple[Queries, dict[str, Any]]]:
        async with c.pg_schema() as schema:
            conn = await connect(schema)
            try:
                queries = Queries(AsyncpgDriver(conn))
                await queries.install()
                yield queries, {"schema": schema}
            finally:
                await conn.close()

    async def enqueue_one(self, n: int) -> float:
        async with self._queries() as (queries, _):
            return await c.rate(n, lambda: queries.enqueue("noop", None))

    async def enqueue_many(self, n: int) -> float:
        async with self._queries() as (queries, _):
            return await c.batched_rate(
                n, lambda size: queries.enqueue(["noop"] * size, [None] * size, [0] * size)
            )

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._queries() as (queries, config):
            with c.Workers("pgqueuer_peer", config, processes) as w:
                ids = []
                for start in range(0, n, c.BATCH):
                    size = min(c.BATCH, n - start)
                    ids += await queries.enqueue([task] * size, [None] * size, [0] * size)

                async def last() -> bool:
                    return any(s == "successful" for _, s in await queries.job_status(ids[-1:]))

                async def every() -> bool:
                    return sum(s.count for s in await queries.queue_size()) == 0

                return await c.drain_rate(n, w, last, every)

    async def latency(self, n: int) -> dict[str, float]:
        async with self._queries() as (queries, config):
            listen = await connect(config["schema"])
            try:
                watcher = CompletionWatcher(
                    AsyncpgDriver(listen),
                    queries=queries,
                    debounce=timedelta(milliseconds=c.RESULT_POLL * 1000),
                )
                async with watcher:

                    async def one() -> None:
                        [job_id] = await queries.enqueue("noop", None)
                        await asyncio.wait_for(watcher.wait_for(job_id), 60)

                    with c.Workers("pgqueuer_peer", config) as w:
                        stats = await c.latency_stats(n, w, one)
            finally:
                await listen.close()
            return stats
