"""Celery: Redis broker + Redis result backend; sync tasks; ``celery worker -P threads -c 10``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from celery import Celery, group

from benchmarks.peers import _common as c
from benchmarks.peers import tasks

# Celery's result keys (``celery-task-meta-``) and kombu's bindings have fixed names.
FIXED = ["celery-task-meta-*", "_kombu.binding.*", "unacked", "unacked_index", "unacked_mutex"]


def make(config: dict[str, Any]) -> tuple[Celery, Any]:
    app = Celery("sitqbench", broker=c.REDIS_URL, backend=c.REDIS_URL, set_as_current=False)
    app.conf.update(task_default_queue=config["queue"], broker_connection_retry_on_startup=True)
    app.task(name="sleep")(tasks.celery_sleep)
    return app, app.task(name="noop")(tasks.celery_noop)


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """``celery worker``: one process, 10 threads; no start-up sync with other nodes."""
    app, _ = make(config)
    argv = ["worker", "--pool=threads", f"--concurrency={c.CONCURRENCY}", "--loglevel=WARNING"]
    node = f"--hostname=sqb{os.getpid()}@%h"  # unique when several run at once
    return lambda: app.worker_main([*argv, node, "--without-mingle", "--without-gossip"])


class CeleryRedis:
    name = "celery"
    backend = "redis"
    notes = (
        "sync tasks only; thread pool, so one process (the default prefork pool would start "
        "10); no bulk enqueue (group().apply_async() publishes one message per task); "
        "AsyncResult.get() waits on pub/sub; acks before running by default (acks_late off), "
        "so a task of a worker that died is lost; drains capped at 1,000 tasks (about 400 "
        "no-ops per second)"
    )
    max_drain_tasks = 1000

    @asynccontextmanager
    async def _app(self) -> AsyncIterator[tuple[Celery, Any, dict[str, Any]]]:
        async with c.redis_store(*FIXED) as tok:
            config = {"queue": tok}
            app, noop = make(config)
            try:
                yield app, noop, config
            finally:
                app.close()

    async def enqueue_one(self, n: int) -> float:
        async with self._app() as (_, noop, _config):
            return await c.rate(n, noop.delay)

    async def enqueue_many(self, n: int) -> float:
        async with self._app() as (_, noop, _config):
            return await c.batched_rate(
                n, lambda size: group(noop.s() for _ in range(size)).apply_async()
            )

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._app() as (app, noop, config):
            with c.Workers("celery_peer", config, processes) as w:
                call = noop if task == "noop" else app.tasks["sleep"]
                results = [call.delay() for _ in range(n)]
                keys = [app.backend.get_key_for_task(r.id) for r in results]
                client = app.backend.client
                return await c.drain_rate(
                    n, w, lambda: client.exists(keys[-1]) == 1, lambda: client.exists(*keys) == n
                )

    async def latency(self, n: int) -> dict[str, float]:
        async with self._app() as (_, noop, config):

            def one() -> None:
                noop.delay().get(timeout=60)

            with c.Workers("celery_peer", config) as w:
                return await c.latency_stats(n, w, one)
