"""Does a page of ``TaskQueue.list_tasks`` cost the same beside a million stored tasks?

    python -m benchmarks.listing [--backend sqlite] [--bulk 1000000] [--per-group 600]
                                 [--reps 25] [--runs 3] [--json PATH]

Two stores are built alike, each fresh (the isolated stores of ``python -m benchmarks``):

* **almost empty**: the *measured tasks* only: on each of the queues ``list-a`` and ``list-b``,
  ``--per-group`` tasks in each status (pending, running, failed, cancelled, success);
* **beside N**: first ``--bulk`` other tasks, then the same measured tasks.

The measured tasks are made through the backend interface alone (``enqueue``, ``claim`` with a
long lease, ``settle``, ``cancel``; no worker runs), so every backend gets them the same way.
The bulk is filled by a per-backend *filler* (``FILLERS``), as fast as the store allows:

* SQLite: plain ``INSERT`` statements of finished, pending and running rows in large
  transactions (the same columns the backend writes);
* PostgreSQL: ``listing_postgres.fill``, one ``INSERT ... SELECT ... FROM generate_series``
  per status straight into the schema's tables, then ``VACUUM ANALYZE``;
* Redis: ``listing_redis.fill``, through the backend interface, each step one pipelined round
  trip for a batch (``enqueue`` of 10,000, ``claim`` and ``settle`` of 1,000);
* NATS: ``listing_nats.fill``, through the backend interface in batches of 1,000 and 256.

A backend without a filler of its own gets the generic one, which goes through the backend
interface one group at a time (correct everywhere, but slow for a million). Bulk tasks spread
over ten queues (``list-a``, ``list-b`` and eight others) and, like a store that has run for a
while, are mostly finished: 55% success, 15% failed, 10% cancelled, 19.9% pending and 0.1%
running (running tasks are bounded by the workers' concurrency, not by what a store holds).
Each filler keeps its own pending details: SQLite's have priorities 0 to 9 and due times spread
over a day either side of now, PostgreSQL's and Redis's are a quarter scheduled an hour or more
ahead, NATS's are all due.

``filled_store`` builds such a store for other benchmarks (``python -m benchmarks.web``).

Then, on each store, for each status, with and without ``queue="list-a"``, the first page and a
page ``--depth`` tasks deep (reached by following cursors), each ``TaskQueue.list_tasks(limit=50)``
call timed ``--reps`` times; its median is one run, and ``--runs`` runs give the median shown.
Prints a markdown table with the ratio beside N / almost empty, and writes the figures as JSON.

Speed is measured here and only here; the test suite asserts no timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from sitq import TaskQueue, backend_from_url
from sitq.backends.base import STATUS_CODE, Backend
from sitq.models import Claim, Finish, NewTask, TaskStatus
from sitq.options import TaskOptions

ROOT = Path(__file__).resolve().parent.parent
MEASURED_QUEUES = ("list-a", "list-b")
BULK_QUEUES = (*MEASURED_QUEUES, *(f"bulk-{i}" for i in range(8)))
STATUSES = tuple(TaskStatus)
PAGE = 50
LONG_LEASE = 86_400.0
RESULT_TTL = 7 * 86_400.0
PAYLOAD = b"\x80\x05listing-benchmark" + b"\x00" * 64
OPTIONS = TaskOptions().engine_options()
FUNCTION = "benchmarks.tasks.noop"
# The bulk's mix of statuses (fractions of --bulk).
MIX = (
    (TaskStatus.SUCCESS, 0.55),
    (TaskStatus.FAILED, 0.15),
    (TaskStatus.CANCELLED, 0.10),
    (TaskStatus.PENDING, 0.199),
    (TaskStatus.RUNNING, 0.001),
)

Filler = Callable[[Backend, str, int], Awaitable[None]]


def log(message: str) -> None:
    """Progress, on stderr so the table on stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


def new_task(queue: str, priority: int = 0, eta: float | None = None) -> NewTask:
    now = time.time()
    return NewTask(
        id=uuid.uuid4().hex,
        queue=queue,
        payload=PAYLOAD,
        options=OPTIONS,
        priority=priority,
        eta=now if eta is None else max(eta, now),
        enqueued_at=now,
        result_ttl=RESULT_TTL,
        fresh_id=True,
        function=FUNCTION,
    )


# -- the measured tasks (backend interface only) ---------------------------------------------


async def make_group(backend: Backend, queue: str, status: TaskStatus, n: int) -> None:
    """``n`` tasks of ``queue`` left in ``status``, through the backend steps."""
    rng = random.Random(f"{queue}/{status}")
    if status is TaskStatus.PENDING:
        tasks = [
            new_task(queue, rng.randrange(3), time.time() + rng.uniform(-60, 3600))
            for _ in range(n)
        ]
        await backend.enqueue(tasks)
        return
    if status is TaskStatus.CANCELLED:
        later = time.time() + 86_400
        tasks = [new_task(queue, eta=later) for _ in range(n)]
        await backend.enqueue(tasks)
        for task in tasks:
            await backend.cancel(task.id, time.time())
        return
    # Running and finished: enqueued, then claimed from their queue at a priority that puts them
    # ahead of any bulk task there (priority 100), so the claims take exactly these.
    await backend.enqueue([new_task(queue, priority=100) for _ in range(n)])
    claims: list[Claim] = []
    while len(claims) < n:
        got = await backend.claim([queue], n - len(claims), "listing-bench", LONG_LEASE)
        if not got:
            raise RuntimeError(f"claimed {len(claims)} of {n} tasks of {queue}")
        claims += got
    if status is TaskStatus.RUNNING:
        return
    now = time.time()
    error = None if status is TaskStatus.SUCCESS else "ValueError: benchmark"
    await backend.settle(
        [Finish(c.ref, status, None, error, None, now, now + RESULT_TTL) for c in claims]
    )


async def make_measured(backend: Backend, per_group: int) -> None:
    # Pending ones last: claiming the others must not take them.
    order = [s for s in STATUSES if s is not TaskStatus.PENDING] + [TaskStatus.PENDING]
    for status in order:
        for queue in MEASURED_QUEUES:
            await make_group(backend, queue, status, per_group)


# -- the bulk (per backend) ------------------------------------------------------------------


def bulk_plan(n: int, seed: int = 7) -> list[tuple[str, TaskStatus, int, float]]:
    """``(queue, status, priority, time)`` of each bulk task; the time is the due time of a
    pending task and the start or finish time of the others."""
    rng = random.Random(seed)
    statuses = [s for s, _ in MIX]
    weights = [w for _, w in MIX]
    now = time.time()
    plan = []
    for i in range(n):
        status = rng.choices(statuses, weights)[0]
        if status is TaskStatus.PENDING:
            at = now + rng.uniform(-86_400, 86_400)
        else:
            at = now - rng.uniform(0, 86_400)
        plan.append((BULK_QUEUES[i % len(BULK_QUEUES)], status, rng.randrange(10), at))
    return plan


async def fill_generic(backend: Backend, url: str, n: int) -> None:
    """Any backend, through its steps: every bulk task enqueued, then claimed and settled or
    cancelled as the plan says. Correct everywhere; slow for a million."""
    plan = bulk_plan(n)
    for queue in BULK_QUEUES:
        mine = [p for p in plan if p[0] == queue]
        for status in STATUSES:
            count = sum(1 for p in mine if p[1] is status)
            for start in range(0, count, 10_000):
                await make_group(backend, queue, status, min(10_000, count - start))
        log(f"  bulk: {queue} done")


async def fill_sqlite(backend: Backend, url: str, n: int) -> None:
    """SQLite: the rows written straight into the file, 100,000 per transaction, with the
    columns the backend itself writes for each state (indexes are kept by SQLite as usual)."""
    import sqlite3

    path = url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        plan = bulk_plan(n)
        sql = (
            "INSERT INTO sitq_tasks (id, queue, state, priority, eta, payload, options, "
            "attempts, fence, lease_until, worker_id, enqueued_at, started_at, finished_at, "
            "expires_at, result_ttl, error, function) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        for start in range(0, n, 100_000):
            rows = []
            for queue, status, priority, at in plan[start : start + 100_000]:
                running = status is TaskStatus.RUNNING
                finished = status.is_final
                started = None if status is TaskStatus.PENDING else at - 1.0
                rows.append(
                    (
                        uuid.uuid4().hex,
                        queue,
                        STATUS_CODE[status],
                        priority,
                        at if status is TaskStatus.PENDING else at - 2.0,
                        None if status is TaskStatus.SUCCESS else PAYLOAD,
                        OPTIONS,
                        0 if status is TaskStatus.PENDING else 1,
                        0 if status is TaskStatus.PENDING else 1,
                        at + LONG_LEASE if running else None,
                        "bulk-worker" if running else None,
                        at - 3.0,
                        started,
                        at if finished else None,
                        at + RESULT_TTL if finished else None,
                        RESULT_TTL,
                        "ValueError: bulk" if status is TaskStatus.FAILED else None,
                        FUNCTION,
                    )
                )
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
            log(f"  bulk: {start + len(rows):,}/{n:,} rows")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def bulk_counts(n: int) -> dict[TaskStatus, int]:
    """How many of ``n`` bulk tasks are in each status (``MIX``; pending takes the rounding)."""
    counts = {status: int(n * share) for status, share in MIX}
    counts[TaskStatus.PENDING] += n - sum(counts.values())
    return counts


async def fill_postgres(backend: Backend, url: str, n: int) -> None:
    """PostgreSQL: ``listing_postgres.fill`` into the store's schema (``?schema=`` of ``url``),
    over ``BULK_QUEUES``."""
    import asyncpg

    from benchmarks.listing_postgres import fill

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    schema = query.pop("schema", ["public"])[0]
    dsn = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    conn = await asyncpg.connect(dsn)
    try:
        await fill(conn, schema, bulk_counts(n), BULK_QUEUES)
    finally:
        await conn.close()


async def fill_redis(backend: Backend, url: str, n: int) -> None:
    """Redis: ``listing_redis.fill`` over ``BULK_QUEUES``; a quarter of the pending tasks are
    scheduled an hour ahead."""
    from benchmarks.listing_redis import BATCH, fill

    counts = bulk_counts(n)
    per_queue = {
        status.value: counts[status] // len(BULK_QUEUES)
        for status in STATUSES
        if status is not TaskStatus.PENDING
    }
    pending = counts[TaskStatus.PENDING] // len(BULK_QUEUES)
    per_queue["scheduled"] = pending // 4
    per_queue["due"] = pending - per_queue["scheduled"]
    await fill(backend, per_queue, BATCH, BULK_QUEUES)


async def fill_nats(backend: Backend, url: str, n: int) -> None:
    """NATS: ``listing_nats.fill`` over ``BULK_QUEUES`` in equal shares."""
    from benchmarks.listing_nats import fill

    share = 1 / len(BULK_QUEUES)
    await fill(backend, n, [(queue, share) for queue in BULK_QUEUES], dict(MIX))


FILLERS: dict[str, Filler] = {
    "sqlite": fill_sqlite,
    "postgres": fill_postgres,
    "redis": fill_redis,
    "nats": fill_nats,
    # A backend without a filler here gets fill_generic.
}


@asynccontextmanager
async def filled_store(
    backend_name: str, bulk: int, per_group: int
) -> AsyncIterator[tuple[str, TaskQueue]]:
    """A fresh store of ``backend_name`` (an isolated store of ``python -m benchmarks``,
    removed afterwards) holding ``bulk`` tasks from the backend's filler, then the measured
    tasks (``per_group`` per status and measured queue); its URL and a connected queue."""
    from benchmarks.__main__ import STORES

    async with STORES[backend_name]() as url:
        backend = backend_from_url(url)
        async with TaskQueue(backend) as queue:
            if bulk:
                log(f"{backend_name}: filling {bulk:,} bulk tasks")
                started = time.perf_counter()
                await FILLERS.get(backend_name, fill_generic)(backend, url, bulk)
                log(f"  filled in {time.perf_counter() - started:.1f} s")
            await make_measured(backend, per_group)
            yield url, queue


# -- measuring -------------------------------------------------------------------------------


async def cursor_at(queue: TaskQueue, status: TaskStatus, name: str | None, depth: int) -> str:
    """The cursor ``depth`` tasks into the listing (followed a page of up to 1,000 at a time)."""
    cursor = None
    seen = 0
    while seen < depth:
        page = await queue.list_tasks(status, name, limit=min(1000, depth - seen), cursor=cursor)
        seen += len(page.tasks)
        if page.next_cursor is None:
            raise RuntimeError(f"{status} on {name}: only {seen} tasks, fewer than {depth}")
        cursor = page.next_cursor
    assert cursor is not None
    return cursor


async def time_pages(queue: TaskQueue, depth: int, reps: int) -> dict[str, float]:
    """Median microseconds of each page, keyed ``status/queue/first|deep``."""
    figures: dict[str, float] = {}
    for status in STATUSES:
        for name in (None, MEASURED_QUEUES[0]):
            for where in ("first", "deep"):
                cursor = None if where == "first" else await cursor_at(queue, status, name, depth)
                samples = []
                for _ in range(reps):
                    start = time.perf_counter_ns()
                    page = await queue.list_tasks(status, name, limit=PAGE, cursor=cursor)
                    samples.append((time.perf_counter_ns() - start) / 1_000)
                    if len(page.tasks) != PAGE:
                        raise RuntimeError(f"{status}/{name}/{where}: {len(page.tasks)} tasks")
                figures[f"{status}/{name or 'any'}/{where}"] = statistics.median(samples)
    return figures


async def measure_store(
    backend_name: str, bulk: int, args: argparse.Namespace
) -> list[dict[str, float]]:
    async with filled_store(backend_name, bulk, args.per_group) as (_, queue):
        runs = []
        for run in range(args.runs):
            runs.append(await time_pages(queue, args.depth, args.reps))
            log(f"  {'beside bulk' if bulk else 'almost empty'}: run {run + 1} done")
        return runs


def medians(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def table(empty: dict[str, float], big: dict[str, float], bulk: int) -> str:
    lines = [
        f"| page of {PAGE} (µs, median) | almost empty | beside {bulk:,} | ratio |",
        "|---|---:|---:|---:|",
    ]
    for key in empty:
        ratio = big[key] / empty[key]
        lines.append(f"| {key} | {empty[key]:,.0f} | {big[key]:,.0f} | {ratio:.2f}x |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    empty_runs = await measure_store(args.backend, 0, args)
    big_runs = await measure_store(args.backend, args.bulk, args)
    return {"almost_empty": empty_runs, "beside_bulk": big_runs}


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.listing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend", default="sqlite", choices=("sqlite", "postgres", "redis", "nats")
    )
    parser.add_argument("--bulk", type=int, default=1_000_000, help="tasks stored beside")
    parser.add_argument(
        "--per-group", type=int, default=600, help="measured tasks per status and queue"
    )
    parser.add_argument("--depth", type=int, default=500, help="position of the deep page")
    parser.add_argument("--reps", type=int, default=25, help="calls per page and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "listing.json"
    )
    args = parser.parse_args()
    if args.per_group < args.depth + PAGE:
        parser.error(f"--per-group must be at least --depth + {PAGE}")

    results = asyncio.run(run(args))
    empty, big = medians(results["almost_empty"]), medians(results["beside_bulk"])
    print(table(empty, big, args.bulk))
    ratios = [big[k] / empty[k] for k in empty]
    print(f"\nworst ratio {max(ratios):.2f}x, median ratio {statistics.median(ratios):.2f}x")
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.listing " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": vars(args) | {"json": str(args.json), "page": PAGE},
        "medians": {"almost_empty": empty, "beside_bulk": big},
        "runs": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
