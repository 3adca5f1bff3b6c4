"""procrastinate: async tasks on PostgreSQL (psycopg 3), ``run_worker_async(concurrency=10)``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import procrastinate

from benchmarks.peers import _common as c
from benchmarks.peers import tasks


def make(config: dict[str, Any]) -> tuple[procrastinate.App, Any]:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=config["dsn"]))
    app.task(name="sleep")(tasks.procrastinate_sleep)
    return app, app.task(name="noop")(tasks.procrastinate_noop)


def worker(config: dict[str, Any]) -> Callable[[], None]:
    """What ``procrastinate worker --concurrency 10`` runs."""
    app, _ = make(config)

    async def main() -> None:
        async with app.open_async():
            await app.run_worker_async(concurrency=c.CONCURRENCY)

    return lambda: asyncio.run(main())


STATUS = "SELECT status::text AS status FROM procrastinate_jobs WHERE id = %(id)s"
UNFINISHED = "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"


class ProcrastinatePostgres:
    name = "procrastinate"
    backend = "postgres"
    notes = (
        "no result storage (return values are dropped): job status polled every 1 ms; "
        "enqueue_many = batch_defer_async (one INSERT); workers wake on LISTEN/NOTIFY; "
        "jobs of a worker that died stay 'doing' until retried by hand or by a periodic "
        "task the user writes (stalled jobs); drains capped at 500 tasks (about 160 "
        "no-ops per second)"
    )
    max_drain_tasks = 500

    @asynccontextmanager
    async def _app(self) -> AsyncIterator[tuple[procrastinate.App, Any, dict[str, Any]]]:
        async with c.pg_schema() as schema:
            config = {"dsn": c.pg_dsn(schema)}
            app, noop = make(config)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
                yield app, noop, config

    async def enqueue_one(self, n: int) -> float:
        async with self._app() as (_, noop, _config):
            return await c.rate(n, noop.defer_async)

    async def enqueue_many(self, n: int) -> float:
        async with self._app() as (_, noop, _config):
            return await c.batched_rate(n, lambda size: noop.batch_defer_async(*[{}] * size))

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        async with self._app() as (app, noop, config):
            with c.Workers("procrastinate_peer", config, processes) as w:
                deferrer = noop if task == "noop" else app.tasks["sleep"]
                ids: list[int] = []
                for start in range(0, n, c.BATCH):
                    ids += await deferrer.batch_defer_async(*[{}] * min(c.BATCH, n - start))

                async def last() -> bool:
                    row = await app.connector.execute_query_one_async(STATUS, id=ids[-1])
                    return row["status"] == "succeeded"  # type: ignore[no-any-return]

                async def every() -> bool:
                    row = await app.connector.execute_query_one_async(UNFINISHED)
                    return row["n"] == 0  # type: ignore[no-any-return]

                return await c.drain_rate(n, w, last, every)

    async def latency(self, n: int) -> dict[str, float]:
        async with self._app() as (app, noop, config):

            async def one() -> None:
                job_id = await noop.defer_async()

                async def done() -> bool:
                    row = await app.connector.execute_query_one_async(STATUS, id=job_id)
                    return row["status"] == "succeeded"  # type: ignore[no-any-return]

                await c.poll_until(done)

            with c.Workers("procrastinate_peer", config) as w:
                return await c.latency_stats(n, w, one)
