"""taskiq: async tasks; taskiq-redis (``RedisStreamBroker`` + ``RedisAsyncResultBackend``) and
taskiq-nats (``PullBasedJetStreamBroker`` + ``NATSObjectStoreResultBackend``); one receiver
with ``max_async_tasks=10``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from taskiq import AsyncBroker
from taskiq.api import run_receiver_task
from taskiq_nats import NATSObjectStoreResultBackend, PullBasedJetStreamBroker
from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from benchmarks.peers import _common as c
from benchmarks.peers import tasks


def make(config: dict[str, Any]) -> tuple[AsyncBroker, dict[str, Any]]:
    """The broker with its result backend, and its tasks by name (``noop``, ``sleep``)."""
    tok = config["token"]
    broker: AsyncBroker
    if config["kind"] == "redis":
        broker = RedisStreamBroker(
            c.REDIS_URL, queue_name=f"{tok}:tasks", consumer_group_name=tok
        ).with_result_backend(RedisAsyncResultBackend(c.REDIS_URL, prefix_str=tok))
    else:
        broker = PullBasedJetStreamBroker(
            c.NATS_URL, subject=f"{tok}.tasks", stream_name=tok, durable=tok
        ).with_result_backend(NATSObjectStoreResultBackend(c.NATS_URL, bucket_name=tok))
    return broker, {
        "noop": broker.register_task(tasks.taskiq_noop, task_name="noop"),
        "sleep": broker.register_task(tasks.taskiq_sleep, task_name="sleep"),
    }


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """What ``taskiq worker app:broker --workers 1 --max-async-tasks 10`` runs in its one
    worker process (acknowledged once the result is saved, the default), on uvloop as that
    command picks it where installed."""
    broker, _ = make(config)
    broker.is_worker_process = True
    return lambda: c.run_uvloop_if_installed(
        run_receiver_task(broker, max_async_tasks=c.CONCURRENCY, run_startup=True)
    )


class _Taskiq:
    name = "taskiq"
    max_drain_tasks = 1000
    backend = ""
    notes = ""

    def store(self) -> Any:
        raise NotImplementedError

    async def all_done(self, broker: AsyncBroker, ids: list[str], tok: str) -> bool:
        raise NotImplementedError

    @asynccontextmanager
    async def _broker(self) -> AsyncIterator[tuple[AsyncBroker, Any, dict[str, Any]]]:
        async with self.store() as config:
            broker, registered = make(config)
            await broker.startup()
            try:
                yield broker, registered, config
            finally:
                await broker.shutdown()

    async def enqueue_one(self, n: int) -> float:
        async with self._broker() as (_, registered, _config):
            return await c.rate(n, registered["noop"].kiq)

    async def enqueue_many(self, n: int) -> None:
        return None

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._broker() as (broker, registered, config):
            with c.Workers("taskiq_peer", config, processes) as w:
                sent = [await registered[task].kiq() for _ in range(n)]
                ids = [t.task_id for t in sent]
                return await c.drain_rate(
                    n, w, sent[-1].is_ready, lambda: self.all_done(broker, ids, config["token"])
                )

    async def latency(self, n: int) -> dict[str, float]:
        async with self._broker() as (_, registered, config):

            async def one() -> None:
                task = await registered["noop"].kiq()
                await task.wait_result(check_interval=c.RESULT_POLL, timeout=60)

            with c.Workers("taskiq_peer", config) as w:
                return await c.latency_stats(n, w, one)


_NOTES = (
    "no bulk enqueue; wait_result() polls the result backend, given check_interval=1 ms; "
    "one receiver in one process (the taskiq worker command starts 2 by default); "
    "drains capped at 1,000 tasks (about 700 to 1,100 no-ops per second)"
)


class TaskiqRedis(_Taskiq):
    backend = "redis"
    notes = _NOTES + (
        "; Redis stream consumer group, acked once the result is saved: unacked tasks of a "
        "worker that died are reclaimed after idle_timeout (10 min)"
    )

    @asynccontextmanager
    async def store(self) -> AsyncIterator[dict[str, Any]]:
        async with c.redis_store() as tok:
            yield {"kind": "redis", "token": tok}

    async def all_done(self, broker: AsyncBroker, ids: list[str], tok: str) -> bool:
        import redis.asyncio

        client = redis.asyncio.Redis.from_url(c.REDIS_URL)
        try:
            return await client.exists(*[f"{tok}:{i}" for i in ids]) == len(ids)  # type: ignore[no-any-return]
        finally:
            await client.aclose()


class TaskiqNats(_Taskiq):
    backend = "nats"
    notes = _NOTES + (
        "; JetStream pull consumer fetching 1 message at a time (pull_consume_batch default), "
        "acked once the result is saved, redelivered after ack_wait; results in an object "
        "store bucket"
    )

    @asynccontextmanager
    async def store(self) -> AsyncIterator[dict[str, Any]]:
        async with c.nats_store() as tok:
            yield {"kind": "nats", "token": tok}

    async def all_done(self, broker: AsyncBroker, ids: list[str], tok: str) -> bool:
        assert isinstance(broker, PullBasedJetStreamBroker)
        info = await broker.js.consumer_info(tok, tok)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)
