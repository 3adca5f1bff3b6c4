"""SAQ: async tasks on Redis or PostgreSQL, ``Worker(concurrency=10)``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from saq import Queue, Worker
from saq.job import Status

from benchmarks.peers import _common as c
from benchmarks.peers import tasks


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """What ``saq settings`` runs: connect the queue, ``Worker.start()``; concurrency 10."""
    queue = Queue.from_url(config["url"], name=config["queue"])
    w = Worker(
        queue,
        functions=[("noop", tasks.saq_noop), ("sleep", tasks.saq_sleep)],
        concurrency=c.CONCURRENCY,
    )

    async def main() -> None:
        await queue.connect()
        try:
            await w.start()
        finally:
            await queue.disconnect()

    return lambda: asyncio.run(main())


_NOTES = (
    "no bulk enqueue (map() gathers single enqueues and waits for results); "
    "results awaited with Queue.apply(poll_interval=1 ms), which polls; "
    "a job whose worker died is swept and, with the default retries=1, failed, not rerun; "
    "drains capped at 500 tasks (about 250 to 400 no-ops per second)"
)


class _Saq:
    name = "saq"
    max_drain_tasks = 500
    backend = ""
    notes = ""

    def store(self) -> Any:
        raise NotImplementedError

    @asynccontextmanager
    async def _queue(self) -> AsyncIterator[tuple[Queue, dict[str, Any]]]:
        async with self.store() as config:
            queue = Queue.from_url(config["url"], name=config["queue"])
            await queue.connect()
            try:
                yield queue, config
            finally:
                await queue.disconnect()

    async def enqueue_one(self, n: int) -> float:
        async with self._queue() as (queue, _):
            return await c.rate(n, lambda: queue.enqueue("noop"))

    async def enqueue_many(self, n: int) -> None:
        return None

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._queue() as (queue, config):
            with c.Workers("saq_peer", config, processes) as w:
                jobs = [await queue.enqueue(task) for _ in range(n)]
                last_key = jobs[-1].key if jobs[-1] else ""

                async def last() -> bool:
                    job = await queue.job(last_key)
                    return job is not None and job.status == Status.COMPLETE

                async def every() -> bool:
                    return await queue.count("incomplete") == 0

                return await c.drain_rate(n, w, last, every)

    async def latency(self, n: int) -> dict[str, float]:
        async with self._queue() as (queue, config):

            async def one() -> None:
                await queue.apply("noop", timeout=60, poll_interval=c.RESULT_POLL)

            with c.Workers("saq_peer", config) as w:
                return await c.latency_stats(n, w, one)


class SaqRedis(_Saq):
    backend = "redis"
    notes = _NOTES + "; workers block on BLMOVE"

    @asynccontextmanager
    async def store(self) -> AsyncIterator[dict[str, Any]]:
        async with c.redis_store() as tok:
            yield {"url": c.REDIS_URL, "queue": tok}


class SaqPostgres(_Saq):
    backend = "postgres"
    notes = _NOTES + "; workers wake on LISTEN/NOTIFY"

    @asynccontextmanager
    async def store(self) -> AsyncIterator[dict[str, Any]]:
        async with c.pg_schema() as schema:
            yield {"url": c.pg_dsn(schema), "queue": "default"}
