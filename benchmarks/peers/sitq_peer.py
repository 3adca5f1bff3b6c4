"""sitq itself, through the same harness as its peers, so every column is measured alike.

The worker is what ``benchmarks/_worker.py`` runs (``AsyncWorker(concurrency=10,
poll_interval=1.0)``, or the ``ThreadWorker`` / ``ProcessWorker`` of the ``sitq-thread`` and
``sitq-process`` columns); the tasks are ``benchmarks.tasks.noop`` and ``sleep_10ms``, as in
``python -m benchmarks``.
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

TASKS = {"noop": tasks.noop, "sleep": tasks.sleep_10ms}
# The sitq worker's event loop (``run.py --sitq-loop``).
LOOP = "asyncio"


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """What ``sitq worker --kind KIND --concurrency 10 --loop LOOP`` runs (``run.py``'s
    ``--sitq-loop``: asyncio unless told). The executor is started before ``ready``: that
    only matters to ``ProcessWorker``, whose 10 child processes would otherwise start on the
    clock (a second or more on 2 cores, and 4 such workers start 40)."""
    backend = backend_from_url(config["url"])
    w = WORKER_KINDS[config["kind"]](backend, concurrency=c.CONCURRENCY, poll_interval=1.0)
    factory = None
    if config.get("loop", "asyncio") == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    runner = asyncio.Runner(loop_factory=factory)
    runner.run(w.executor.start())

    async def main() -> None:
        await backend.connect()
        await w.start()
        await asyncio.Event().wait()  # until killed

    return lambda: runner.run(main())


class _Sitq:
    name = "sitq"
    kind = "async"
    backend = ""
    notes = (
        "the baseline: async tasks; AsyncWorker(concurrency=10) per process; "
        "at-least-once with a lease (30 s)"
    )
    # Enqueueing does not depend on the worker kind: the kind columns measure workers only.
    skip: frozenset[str] = frozenset()

    def store(self) -> Any:
        raise NotImplementedError

    @asynccontextmanager
    async def _queue(self) -> AsyncIterator[tuple[TaskQueue, dict[str, Any]]]:
        async with self.store() as url, TaskQueue(url) as queue:
            yield queue, {"url": url, "kind": self.kind, "loop": LOOP}

    async def enqueue_one(self, n: int) -> float:
        async with self._queue() as (queue, _):
            return await c.rate(n, lambda: queue.enqueue(tasks.noop))

    async def enqueue_many(self, n: int) -> float:
        async with self._queue() as (queue, _):
            return await c.batched_rate(
                n, lambda size: queue.enqueue_many([(tasks.noop, ())] * size)
            )

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._queue() as (queue, config):
            with c.Workers("sitq_peer", config, processes) as w:
                ids: list[str] = []
                for start in range(0, n, c.BATCH):
                    ids += await queue.enqueue_many([(TASKS[task], ())] * min(c.BATCH, n - start))

                async def last() -> bool:
                    return await queue.get_result(ids[-1]) is not None

                async def every() -> bool:
                    return sum(s.succeeded for s in await queue.stats()) >= n

                return await c.drain_rate(n, w, last, every)

    async def latency(self, n: int) -> dict[str, float]:
        async with self._queue() as (queue, config):

            async def one() -> None:
                assert await queue.get_result(await queue.enqueue(tasks.noop), timeout=60)

            with c.Workers("sitq_peer", config) as w:
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


_KIND_SKIP = frozenset({"enqueue_per_s", "enqueue_many_per_s"})


class _ThreadKind:
    name = "sitq-thread"
    kind = "thread"
    notes = (
        "ThreadWorker(concurrency=10): each task runs in a pool thread (an async task on a "
        "new event loop there); enqueue does not depend on the worker kind (see sitq)"
    )
    skip = _KIND_SKIP


class _ProcessKind:
    name = "sitq-process"
    kind = "process"
    notes = (
        "ProcessWorker(concurrency=10): each task runs in one of 10 child processes per "
        "worker (started before go); enqueue does not depend on the worker kind (see sitq); "
        "no 4-process drain: four such workers would run 40 child processes"
    )
    skip = _KIND_SKIP | {"drain_multi_per_s"}


class SitqSqliteThread(_ThreadKind, SitqSqlite):
    pass


class SitqSqliteProcess(_ProcessKind, SitqSqlite):
    pass


class SitqPostgresThread(_ThreadKind, SitqPostgres):
    pass


class SitqPostgresProcess(_ProcessKind, SitqPostgres):
    pass


class SitqRedisThread(_ThreadKind, SitqRedis):
    pass


class SitqRedisProcess(_ProcessKind, SitqRedis):
    pass


class SitqNatsThread(_ThreadKind, SitqNats):
    pass


class SitqNatsProcess(_ProcessKind, SitqNats):
    pass
