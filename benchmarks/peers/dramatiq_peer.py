"""Dramatiq: ``RedisBroker`` + ``Results`` (Redis backend) + ``AsyncIO`` (async actors);
one worker process with 10 worker threads."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware.asyncio import AsyncIO
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from benchmarks.peers import _common as c
from benchmarks.peers import tasks


def make(config: dict[str, Any]) -> tuple[RedisBroker, RedisBackend, dramatiq.Actor[[], None]]:
    tok = config["token"]
    broker = RedisBroker(url=c.REDIS_URL, namespace=tok)  # type: ignore[no-untyped-call]
    results = RedisBackend(  # type: ignore[no-untyped-call]
        url=c.REDIS_URL, namespace=f"{tok}-results", use_namespace_prefix_keys=True
    )
    broker.add_middleware(Results(backend=results))  # type: ignore[no-untyped-call]
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    register = dramatiq.actor(actor_name="noop", broker=broker, store_results=True)
    dramatiq.actor(actor_name="sleep", broker=broker, store_results=True)(tasks.dramatiq_sleep)
    return broker, results, register(tasks.dramatiq_noop)


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """What ``dramatiq app --processes 1 --threads 10`` runs in its one worker process."""
    broker, _, _ = make(config)

    def run() -> None:
        dramatiq.Worker(broker, worker_threads=c.CONCURRENCY).start()
        threading.Event().wait()  # until killed

    return run


class DramatiqRedis:
    name = "dramatiq"
    backend = "redis"
    notes = (
        "no bulk enqueue (group().run() enqueues one at a time); async actors through the "
        "AsyncIO middleware (one event-loop thread); get_result(block=True) blocks on "
        "BRPOPLPUSH; the dramatiq command forks its worker processes (one here); a task of a "
        "worker that died is requeued once its heartbeat times out (60 s)"
    )

    @asynccontextmanager
    async def _app(
        self,
    ) -> AsyncIterator[tuple[RedisBackend, dramatiq.Actor[[], None], dict[str, Any]]]:
        async with c.redis_store() as tok:
            config = {"token": tok}
            broker, results, noop = make(config)
            try:
                yield results, noop, config
            finally:
                broker.close()

    async def enqueue_one(self, n: int) -> float:
        async with self._app() as (_, noop, _config):
            return await c.rate(n, noop.send)

    async def enqueue_many(self, n: int) -> float:
        async with self._app() as (_, noop, _config):
            return await c.batched_rate(
                n,
                lambda size: dramatiq.group(  # type: ignore[no-untyped-call]
                    noop.message() for _ in range(size)
                ).run(),
            )

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._app() as (results, noop, config):
            with c.Workers("dramatiq_peer", config, processes) as w:
                actor = noop if task == "noop" else noop.broker.get_actor("sleep")
                messages = [actor.send() for _ in range(n)]
                keys = [results.build_message_key(m) for m in messages]
                client = results.client
                return await c.drain_rate(
                    n, w, lambda: client.exists(keys[-1]) == 1, lambda: client.exists(*keys) == n
                )

    async def latency(self, n: int) -> dict[str, float]:
        async with self._app() as (_, noop, config):

            def one() -> None:
                noop.send().get_result(block=True, timeout=60_000)

            with c.Workers("dramatiq_peer", config) as w:
                return await c.latency_stats(n, w, one)
