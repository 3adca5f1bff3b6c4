"""RQ: ``rq worker`` (forks a work horse per job); async task run on a fresh event loop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis import Redis
from rq import Queue, Worker

from benchmarks.peers import _common as c
from benchmarks.peers import tasks

# RQ's key names start with a fixed ``rq:`` (workers, registries, jobs): only queues are ours.
FIXED = ["rq:*"]


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """What ``rq worker QUEUE`` runs (no per-job log lines: logging_level WARNING)."""
    conn = Redis.from_url(config["url"])
    w = Worker([Queue(config["queue"], connection=conn)], connection=conn)

    def run() -> None:
        w.work(logging_level="WARNING")

    return run


class RqRedis:
    name = "rq"
    backend = "redis"
    notes = (
        "no concurrency setting: one job at a time, each in a forked work horse; async "
        "function run on a new event loop per job; enqueue_many = Queue.enqueue_many "
        "(one pipeline); latest_result(timeout) blocks on a Redis stream; a job whose "
        "worker died goes to the failed registry, not rerun unless Retry is set; "
        "drains capped at 150 tasks (about 50 no-ops or 20 sleeps per second here)"
    )
    max_drain_tasks = 150

    @asynccontextmanager
    async def _queue(self) -> AsyncIterator[tuple[Queue, dict[str, Any]]]:
        async with c.redis_store(*FIXED) as tok:
            config = {"url": c.REDIS_URL, "queue": tok}
            conn = Redis.from_url(c.REDIS_URL)
            try:
                yield Queue(tok, connection=conn), config
            finally:
                conn.close()

    async def enqueue_one(self, n: int) -> float:
        async with self._queue() as (queue, _):
            return await c.rate(n, lambda: queue.enqueue(tasks.rq_noop))

    async def enqueue_many(self, n: int) -> float:
        async with self._queue() as (queue, _):
            return await c.batched_rate(
                n, lambda size: queue.enqueue_many([Queue.prepare_data(tasks.rq_noop)] * size)
            )

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._queue() as (queue, config):
            with c.Workers("rq_peer", config, processes) as w:
                fn = tasks.rq_sleep if task == "sleep" else tasks.rq_noop
                jobs = queue.enqueue_many([Queue.prepare_data(fn)] * n)
                finished = queue.finished_job_registry.key
                return await c.drain_rate(
                    n,
                    w,
                    lambda: jobs[-1].get_status(refresh=True) == "finished",
                    lambda: int(queue.connection.zcard(finished)) >= n,  # type: ignore[arg-type]
                )

    async def latency(self, n: int) -> dict[str, float]:
        async with self._queue() as (queue, config):

            def one() -> None:
                assert queue.enqueue(tasks.rq_noop).latest_result(timeout=60) is not None

            with c.Workers("rq_peer", config) as w:
                return await c.latency_stats(n, w, one)
