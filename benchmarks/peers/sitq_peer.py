"""sitq itself, through the same harness as its peers, so every column is measured alike.

The worker is what ``benchmarks/_worker.py`` runs (``AsyncWorker(concurrency=10,
poll_interval=1.0)``); the task is ``benchmarks.tasks.noop``, as in ``python -m benchmarks``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from benchmarks import tasks
from benchmarks.peers import _common as c
from sitq import TaskQueue, backend_from_url
from sitq.worker import WORKER_KINDS


def worker(config: dict[str, Any]) -> Callable[[], None]:
    async def main() -> None:
        backend = backend_from_url(config["url"])
        w = WORKER_KINDS["async"](backend, concurrency=c.CONCURRENCY, poll_interval=1.0)
        await backend.connect()
        await w.start()
        await asyncio.Event().wait()  # until killed

    return lambda: asyncio.run(main())


class _Sitq:
    name = "sitq"
    backend = ""
    notes = "the baseline: async no-op; AsyncWorker(concurrency=10) in one process"

    def store(self) -> Any:
        raise NotImplementedError

    @asynccontextmanager
    async def _queue(self) -> AsyncIterator[tuple[TaskQueue, dict[str, Any]]]:
        async with self.store() as url, TaskQueue(url) as queue:
            yield queue, {"url": url}

    async def enqueue_one(self, n: int) -> float:
        async with self._queue() as (queue, _):
            return await c.rate(n, lambda: queue.enqueue(tasks.noop))

    async def enqueue_many(self, n: int) -> float:
        async with self._queue() as (queue, _):
            return await c.batched_rate(
                n, lambda size: queue.enqueue_many([(tasks.noop, ())] * size)
            )

    async def drain(self, n: int) -> float:
        async with self._queue() as (queue, config):
            ids: list[str] = []
            for start in range(0, n, c.BATCH):
                ids += await queue.enqueue_many([(tasks.noop, ())] * min(c.BATCH, n - start))

            async def last() -> bool:
                return await queue.get_result(ids[-1]) is not None

            async def every() -> bool:
                return sum(s.succeeded for s in await queue.stats()) >= n

            with c.WorkerProcess("sitq_peer", config) as w:
                return await c.drain_rate(n, w, last, every)

    async def latency(self, n: int) -> dict[str, float]:
        async with self._queue() as (queue, config):

            async def one() -> None:
                assert await queue.get_result(await queue.enqueue(tasks.noop), timeout=60)

            with c.WorkerProcess("sitq_peer", config) as w:
                return await c.latency_stats(n, w, one)


class SitqSqlite(_Sitq):
    backend = "sqlite"

    @asynccontextmanager
    async def store(self) -> AsyncIterator[str]:
        async with c.sqlite_dir() as tmp:
            yield f"sqlite:///{tmp}/bench.db"


class SitqPostgres(_Sitq):
    backend = "postgres"

    @asynccontextmanager
    async def store(self) -> AsyncIterator[str]:
        async with c.pg_schema() as schema:
            yield f"{c.POSTGRES_DSN}?schema={schema}"


class SitqRedis(_Sitq):
    backend = "redis"

    @asynccontextmanager
    async def store(self) -> AsyncIterator[str]:
        async with c.redis_store() as tok:
            yield f"{c.REDIS_URL}?prefix={tok}"


class SitqNats(_Sitq):
    backend = "nats"

    @asynccontextmanager
    async def store(self) -> AsyncIterator[str]:
        async with c.nats_store() as tok:
            yield f"{c.NATS_URL}?stream={tok.upper()}"
