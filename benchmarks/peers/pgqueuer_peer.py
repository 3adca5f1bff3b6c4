"""PgQueuer: async tasks on PostgreSQL (asyncpg), ``PgQueuer.run(batch_size=10)``."""

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
    """What ``pgq run factory`` runs: one asyncpg connection, ``run(batch_size=10)``."""

    async def main() -> None:
        pgq = PgQueuer.from_asyncpg_connection(await connect(config["schema"]))
        pgq.entrypoint("noop")(tasks.pgqueuer_noop)
        await pgq.run(batch_size=c.CONCURRENCY)

    return lambda: asyncio.run(main())


class PgQueuerPostgres:
    name = "pgqueuer"
    backend = "postgres"
    notes = (
        "no worker concurrency setting: takes batches of batch_size=10 (default) and runs "
        "them at once; finished jobs are written in batches (every 0.1 s or 10 jobs); "
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

    async def drain(self, n: int) -> float:
        async with self._queries() as (queries, config):
            ids = []
            for start in range(0, n, c.BATCH):
                size = min(c.BATCH, n - start)
                ids += await queries.enqueue(["noop"] * size, [None] * size, [0] * size)

            async def last() -> bool:
                return any(s == "successful" for _, s in await queries.job_status(ids[-1:]))

            async def every() -> bool:
                return sum(s.count for s in await queries.queue_size()) == 0

            with c.WorkerProcess("pgqueuer_peer", config) as w:
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

                    with c.WorkerProcess("pgqueuer_peer", config) as w:
                        stats = await c.latency_stats(n, w, one)
            finally:
                await listen.close()
            return stats
