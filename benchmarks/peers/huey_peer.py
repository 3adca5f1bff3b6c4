"""Huey: ``SqliteHuey`` and ``RedisHuey``; sync tasks, a consumer with 10 worker threads."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import Result
from huey.constants import EmptyData

from benchmarks.peers import _common as c
from benchmarks.peers import tasks


def make(config: dict[str, Any]) -> tuple[Huey, Any, Any]:
    """The Huey instance and its ``noop`` and ``sleep`` tasks. ``store_none``: the tasks return
    None, which Huey otherwise does not store, so there would be no result to wait for."""
    huey: Huey
    if config["storage"] == "sqlite":
        huey = SqliteHuey(config["name"], filename=config["path"], store_none=True)
    else:
        huey = RedisHuey(config["name"], url=config["url"], store_none=True)
    return huey, huey.task(name="noop")(tasks.huey_noop), huey.task(name="sleep")(tasks.huey_sleep)


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """``huey_consumer app.huey -w 10`` (thread workers, the default type)."""
    huey, _, _ = make(config)
    consumer = huey.create_consumer(workers=c.CONCURRENCY)
    return consumer.run  # type: ignore[no-any-return]


def _done(huey: Huey, result: Result) -> bool:
    return huey.storage.peek_data(result.id) is not EmptyData


class _Huey:
    name = "huey"
    backend = ""
    notes = ""

    def store(self) -> Any:
        raise NotImplementedError

    async def enqueue_one(self, n: int) -> float:
        async with self.store() as config:
            _, noop, _ = make(config)
            return await c.rate(n, noop)

    async def enqueue_many(self, n: int) -> float:
        async with self.store() as config:
            _, noop, _ = make(config)
            return await c.batched_rate(n, lambda size: noop.map([()] * size))

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self.store() as config:
            with c.Workers("huey_peer", config, processes) as w:
                huey, noop, sleep = make(config)
                call = noop if task == "noop" else sleep
                results = [call() for _ in range(n)]
                return await c.drain_rate(
                    n, w, lambda: _done(huey, results[-1]), lambda: huey.result_count() >= n
                )

    async def latency(self, n: int) -> dict[str, float]:
        async with self.store() as config:
            huey, noop, _ = make(config)

            async def one() -> None:
                result = noop()
                await c.poll_until(lambda: _done(huey, result))

            with c.Workers("huey_peer", config) as w:
                return await c.latency_stats(n, w, one)


_NOTES = (
    "sync tasks only; no bulk enqueue (map() enqueues one at a time); "
    "no result waiting at 1 ms (its getters poll from 0.1 s): result store polled every 1 ms; "
    "store_none=True so no-op results are stored; consumer -w 10 threads, "
)


class HueySqlite(_Huey):
    backend = "sqlite"
    notes = _NOTES + (
        "workers poll SQLite (defaults: 0.1 s, backing off x1.15 to 10 s when idle); "
        "at-most-once: a task taken by a worker that dies is lost (no lease)"
    )

    @asynccontextmanager
    async def store(self) -> AsyncIterator[dict[str, Any]]:
        async with c.sqlite_dir() as tmp:
            yield {"storage": "sqlite", "name": "huey", "path": str(tmp / "huey.db")}


class HueyRedis(_Huey):
    backend = "redis"
    notes = _NOTES + (
        "workers block on BRPOP; "
        "at-most-once: a task popped by a worker that dies is lost (no lease)"
    )

    @asynccontextmanager
    async def store(self) -> AsyncIterator[dict[str, Any]]:
        async with c.redis_store() as tok:
            yield {"storage": "redis", "name": tok, "url": c.REDIS_URL}
