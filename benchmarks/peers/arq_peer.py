"""arq: async tasks on Redis, ``Worker(max_jobs=10)``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis as ArqClient
from arq.connections import RedisSettings
from arq.constants import result_key_prefix
from arq.jobs import Job
from arq.worker import Worker, func

from benchmarks.peers import _common as c
from benchmarks.peers import tasks

# arq's key names are fixed (``arq:job:``, ``arq:result:``...): only the queue name is ours.
FIXED = ["arq:*"]


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """What ``arq WorkerSettings`` runs, with ``max_jobs=10`` (its default)."""
    w = Worker(
        functions=[func(tasks.arq_noop, name="noop"), func(tasks.arq_sleep, name="sleep")],
        redis_settings=RedisSettings.from_dsn(config["url"]),
        queue_name=config["queue"],
        max_jobs=c.CONCURRENCY,
    )
    return w.run


class ArqRedis:
    name = "arq"
    backend = "redis"
    notes = (
        "no bulk enqueue; worker polls the queue every 0.5 s (poll_delay default); "
        "Job.result() polls, given poll_delay=1 ms; "
        "a job whose worker died reruns when its in-progress key expires "
        "(job timeout + 10 s: 310 s by default); few latency samples (each waits for the "
        "0.5 s poll); drains capped at 300 tasks (about 200 no-ops or 40 sleeps per second)"
    )
    max_drain_tasks = 300

    @asynccontextmanager
    async def _pool(self) -> AsyncIterator[tuple[ArqClient, dict[str, Any]]]:
        async with c.redis_store(*FIXED) as tok:
            config = {"url": c.REDIS_URL, "queue": f"arq:queue:{tok}"}
            pool = await create_pool(
                RedisSettings.from_dsn(c.REDIS_URL), default_queue_name=config["queue"]
            )
            try:
                yield pool, config
            finally:
                await pool.aclose()

    async def enqueue_one(self, n: int) -> float:
        async with self._pool() as (pool, _):
            return await c.rate(n, lambda: pool.enqueue_job("noop"))

    async def enqueue_many(self, n: int) -> None:
        return None

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._pool() as (pool, config):
            with c.Workers("arq_peer", config, processes) as w:
                jobs: list[Job] = [j for _ in range(n) if (j := await pool.enqueue_job(task))]
                keys = [result_key_prefix + j.job_id for j in jobs]

                async def last() -> bool:
                    return bool(await pool.exists(keys[-1]))

                async def every() -> bool:
                    return await pool.exists(*keys) == n  # type: ignore[no-any-return]

                return await c.drain_rate(n, w, last, every)

    async def latency(self, n: int) -> dict[str, float]:
        async with self._pool() as (pool, config):

            async def one() -> None:
                job = await pool.enqueue_job("noop")
                assert job is not None
                await job.result(timeout=60, poll_delay=c.RESULT_POLL)

            with c.Workers("arq_peer", config) as w:
                return await c.latency_stats(n, w, one)
