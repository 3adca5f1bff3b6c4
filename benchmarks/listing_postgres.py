"""Does a PostgreSQL listing page cost the same beside a million stored tasks?

    python -m benchmarks.listing_postgres [--dsn postgresql://root@127.0.0.1:5432/test]
        [--rows 1000000] [--reps 30] [--rounds 3] [--keep]

Two schemas of the server are compared, both made by ``PostgresBackend.connect()`` (so with
every migration) and both with ten queues ``q0`` .. ``q9``:

* **small**: 6,000 tasks, 120 per queue in each status (pending, running, success, failed,
  cancelled): every page below is full, and the store is almost empty.
* **big**: ``--rows`` tasks (default 1,000,000) in the proportions of a busy store: 55 %
  success, 12 % failed, 8 % cancelled, 20 % pending, 5 % running.

In both, a quarter of the pending tasks are scheduled an hour or more ahead, a seventh carry
a concurrency key, and priorities are 0, 5 and 10, in every queue alike; results expire in a
week. The rows are
written straight into the schema's tables by one ``INSERT ... SELECT ... FROM
generate_series(1, n)`` per status (15 s for a million on a small machine), then
``VACUUM ANALYZE`` (the state autovacuum brings a store to); no worker runs, so payloads
are dummy bytes.

Each case is ``backend.list_tasks(status, queue, 50, after, now)`` through the public backend
interface: each status, with the queue filter ``q3`` and without, on the first page and on
a deep page (the page after the middle of that listing, whose position is found by following
the backend's positions in pages of 1,000, untimed). Each case runs ``--reps`` times per
round, after one untimed call, the two stores taking turns call by call (so that a busy
moment of the machine hits both alike); the figure is the median of the round medians, in
milliseconds. The table also gives the shared buffers each page's
statement touched (``EXPLAIN (ANALYZE, BUFFERS)``, a measure of cost that ignores the machine's
noise) and the plan check: the indexes the plan reads, and a failure if it has a sequential
scan, a sort of more rows than the merged per-queue pages can hold, or JIT compilation, in
the custom plan or in the generic plan (``plan_cache_mode = force_generic_plan``: the plan
a prepared statement keeps after five runs).

Speed is measured here and only here; the test suite asserts no timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sitq import PostgresBackend
from sitq.models import TaskStatus
from sitq.options import TaskOptions

QUEUES = 10
QUEUE_NAMES = tuple(f"q{i}" for i in range(QUEUES))
PAGE = 50
FILTER = "q3"
PAYLOAD = b"\x80\x05benchmark-payload" + b"\x00" * 64
OPTIONS = TaskOptions().engine_options()
STATUSES = (
    TaskStatus.PENDING,
    TaskStatus.RUNNING,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
    TaskStatus.SUCCESS,
)
SHARES = {
    TaskStatus.SUCCESS: 0.55,
    TaskStatus.FAILED: 0.12,
    TaskStatus.CANCELLED: 0.08,
    TaskStatus.PENDING: 0.20,
    TaskStatus.RUNNING: 0.05,
}
CODES = {TaskStatus.SUCCESS: 2, TaskStatus.FAILED: 3, TaskStatus.CANCELLED: 4}

# $1 count, $2 now, $3 payload, $4 options, $5 the queue names (and $6 the status code of
# results). The id is the status and a number g; the queue is the name at g modulo their
# number, and the other traits follow g / 10, so each queue has its share of each.
PARAMS = """
WITH p AS (SELECT $1::integer AS n, $2::float8 AS now, $3::bytea AS payload,
                  $4::text AS options, $5::text[] AS queues, {code}::smallint AS code)
"""
FILL_PENDING = """
INSERT INTO "{schema}".tasks (id, queue, state, priority, eta, payload, options, enqueued_at,
                              result_ttl, function, concurrency_key, concurrency_limit)
SELECT 'pending-' || g, p.queues[1 + g % cardinality(p.queues)], 0, ((g / 10) % 3) * 5,
       CASE WHEN (g / 10) % 4 = 0 THEN p.now + 3600 + g * 0.01
            ELSE p.now - 86400 + g * 0.01 END,
       p.payload, p.options, p.now - 86400 + g * 0.01, 86400, 'benchmarks.tasks.noop',
       CASE WHEN (g / 10) % 7 = 1 THEN 'key' || (g % 50) END,
       CASE WHEN (g / 10) % 7 = 1 THEN 2 END
FROM p, generate_series(1, p.n) g
"""
FILL_RUNNING = """
INSERT INTO "{schema}".tasks (id, queue, state, priority, eta, payload, options, enqueued_at,
                              result_ttl, function, started_at, lease_until, worker_id,
                              fence, attempts)
SELECT 'running-' || g, p.queues[1 + g % cardinality(p.queues)], 1, 0,
       p.now - 7200 + g * 0.001, p.payload, p.options, p.now - 7200 + g * 0.001, 86400,
       'benchmarks.tasks.noop',
       p.now - 3600 + g * 0.001, p.now + 86400, 'bench-worker', 1, 1
FROM p, generate_series(1, p.n) g
"""
# Failed and cancelled results keep their payload and options, as the backend keeps them.
FILL_RESULTS = """
INSERT INTO "{schema}".results (id, queue, status, attempts, enqueued_at, eta, started_at,
                                finished_at, expires_at, value, error, traceback, function,
                                priority, fence, payload, options, result_ttl)
SELECT 'r' || p.code || '-' || g, p.queues[1 + g % cardinality(p.queues)], p.code, 1,
       p.now - 90000 + g * 0.001,
       p.now - 90000 + g * 0.001, p.now - 86401 + g * 0.001, p.now - 86400 + g * 0.001,
       p.now + 7 * 86400,
       CASE WHEN p.code = 2 THEN '\\x8005'::bytea END,
       CASE WHEN p.code = 3 THEN 'ValueError: benchmark' END,
       CASE WHEN p.code = 3 THEN 'Traceback (most recent call last): ...' END,
       'benchmarks.tasks.noop', 0, 1,
       CASE WHEN p.code <> 2 THEN p.payload END, CASE WHEN p.code <> 2 THEN p.options END,
       86400
FROM p, generate_series(1, p.n) g
"""


def log(message: str) -> None:
    """Progress, on stderr so the table on stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class Store:
    """One schema under test: its backend and how many tasks of each status it holds."""

    name: str
    backend: PostgresBackend
    counts: dict[TaskStatus, int]

    def in_scope(self, status: TaskStatus, queue: str | None) -> int:
        """Tasks a listing of ``status`` (and ``queue``) holds."""
        n = self.counts[status]
        return (
            n
            if queue is None
            else sum(1 for g in range(1, n + 1) if QUEUE_NAMES[g % QUEUES] == queue)
        )


async def fill(
    conn: Any,
    schema: str,
    counts: dict[TaskStatus, int],
    queues: Sequence[str] = QUEUE_NAMES,
) -> None:
    """Write ``counts`` tasks of each status into the tables of ``schema`` (migrated already),
    spread over ``queues`` in turn, then ``VACUUM ANALYZE`` them; ``conn`` is an asyncpg
    connection."""
    now = time.time()
    for status, n in counts.items():
        code = "$6" if status in CODES else "NULL"
        sql = {TaskStatus.PENDING: FILL_PENDING, TaskStatus.RUNNING: FILL_RUNNING}.get(
            status, FILL_RESULTS
        )
        text = PARAMS.replace("{code}", code) + sql.replace("{schema}", schema)
        extra = [CODES[status]] if status in CODES else []
        await conn.execute(text, n, now, PAYLOAD, OPTIONS, list(queues), *extra)
    # The state autovacuum brings a store to, reached now rather than during the timing.
    await conn.execute(f'VACUUM ANALYZE "{schema}".tasks')
    await conn.execute(f'VACUUM ANALYZE "{schema}".results')


async def build(dsn: str, schema: str, counts: dict[TaskStatus, int]) -> Store:
    """A fresh schema (dropped first if it exists), migrated, filled and analysed."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
    backend = PostgresBackend(dsn, schema=schema)
    await backend.connect()
    conn = await asyncpg.connect(dsn)
    try:
        start = time.monotonic()
        await fill(conn, schema, counts)
        log(f"  {schema}: {sum(counts.values()):,} tasks in {time.monotonic() - start:.1f} s")
    finally:
        await conn.close()
    return Store(schema, backend, counts)


async def deep_position(store: Store, status: TaskStatus, queue: str | None) -> str | None:
    """The backend's position after the middle of the listing, following its pages."""
    middle = store.in_scope(status, queue) // 2
    after = None
    seen = 0
    while seen < middle:
        page = await store.backend.list_tasks(
            status, queue, min(1000, middle - seen), after, time.time()
        )
        seen += len(page.tasks)
        after = page.after
        if after is None:
            raise RuntimeError(f"{store.name}: {status.value} ended after {seen} tasks")
    return after


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = [node]
    for child in node.get("Plans", []):
        found.extend(_walk(child))
    return found


async def explain(store: Store, status: TaskStatus, queue: str | None, after: str | None) -> Any:
    """The plan check and the buffers of one page's statement (custom and generic plan)."""
    from sitq.backends.postgres._listing import page_query

    # The backend's own statement and arguments for this page (private: a benchmark's look).
    sql, args = page_query(store.backend._sql.listing, status, queue, PAGE, after)
    sort_cap = (PAGE + 1) * QUEUES * 4
    out: dict[str, Any] = {"indexes": set(), "problems": []}
    conn = await store.backend._pool.acquire()
    try:
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            text = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
            explained = json.loads(text)[0]
            if "JIT" in explained:
                out["problems"].append(f"{mode}: JIT compilation")
            plan = explained["Plan"]
            for node in _walk(plan):
                kind = node["Node Type"]
                if "Index Name" in node:
                    out["indexes"].add(node["Index Name"])
                if kind == "Seq Scan":
                    out["problems"].append(f"{mode}: seq scan of {node.get('Relation Name')}")
                if kind == "Sort" and node.get("Actual Rows", 0) > sort_cap:
                    out["problems"].append(f"{mode}: sort of {node['Actual Rows']} rows")
            if mode == "force_custom_plan":
                out["buffers"] = plan.get("Shared Hit Blocks", 0) + plan.get(
                    "Shared Read Blocks", 0
                )
        await conn.execute("RESET plan_cache_mode")
    finally:
        await store.backend._pool.release(conn)
    return out


async def time_pages(
    stores: list[Store],
    status: TaskStatus,
    queue: str | None,
    afters: list[str | None],
    reps: int,
) -> list[float]:
    """Median milliseconds of ``reps`` calls on each store (after one untimed call each),
    the stores taking turns call by call so that a busy moment of the machine hits both."""
    for store, after in zip(stores, afters, strict=True):
        page = await store.backend.list_tasks(status, queue, PAGE, after, time.time())
        if len(page.tasks) != PAGE:
            raise RuntimeError(f"{store.name}: a {status.value} page has {len(page.tasks)} tasks")
    samples: list[list[float]] = [[] for _ in stores]
    for _ in range(reps):
        for store, after, times in zip(stores, afters, samples, strict=True):
            start = time.perf_counter_ns()
            await store.backend.list_tasks(status, queue, PAGE, after, time.time())
            times.append((time.perf_counter_ns() - start) / 1e6)
    return [statistics.median(times) for times in samples]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build both stores, measure every case, return the figures."""
    small_counts = dict.fromkeys(STATUSES, 120 * QUEUES)
    big_counts = {s: round(args.rows * SHARES[s]) for s in STATUSES}
    log("filling the schemas")
    stores = [
        await build(args.dsn, "bench_list_small", small_counts),
        await build(args.dsn, "bench_list_big", big_counts),
    ]
    cases = [
        (status, queue, deep)
        for status in STATUSES
        for queue in (None, FILTER)
        for deep in (False, True)
    ]
    positions: dict[tuple[str, int], str | None] = {}
    for store in stores:
        for i, (status, queue, deep) in enumerate(cases):
            positions[store.name, i] = await deep_position(store, status, queue) if deep else None
    figures: dict[tuple[str, int], list[float]] = {}
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}")
        for i, (status, queue, _) in enumerate(cases):
            afters = [positions[store.name, i] for store in stores]
            medians = await time_pages(stores, status, queue, afters, args.reps)
            for store, ms in zip(stores, medians, strict=True):
                figures.setdefault((store.name, i), []).append(ms)
    rows = []
    for i, (status, queue, deep) in enumerate(cases):
        small, big = (statistics.median(figures[s.name, i]) for s in stores)
        plans = [await explain(s, status, queue, positions[s.name, i]) for s in stores]
        rows.append(
            {
                "status": status.value,
                "queue": queue or "(all)",
                "page": "deep" if deep else "first",
                "small_ms": small,
                "big_ms": big,
                "ratio": big / small,
                "small_buffers": plans[0]["buffers"],
                "big_buffers": plans[1]["buffers"],
                "indexes": sorted(plans[0]["indexes"] | plans[1]["indexes"]),
                "problems": plans[0]["problems"] + plans[1]["problems"],
            }
        )
    if not args.keep:
        import asyncpg

        conn = await asyncpg.connect(args.dsn)
        try:
            for store in stores:
                await conn.execute(f'DROP SCHEMA "{store.name}" CASCADE')
        finally:
            await conn.close()
    for store in stores:
        await store.backend.close()
    return {"rows": args.rows, "reps": args.reps, "rounds": args.rounds, "cases": rows}


def table(result: dict[str, Any]) -> str:
    """The figures as a markdown table."""
    lines = [
        f"50-task pages, medians of {result['rounds']} rounds x {result['reps']} calls (ms); "
        f"small: 6,000 tasks, big: {result['rows']:,} tasks",
        "",
        "| status | queue | page | small ms | big ms | ratio | buffers small/big | indexes "
        "| plan check |",
        "|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for c in result["cases"]:
        check = "; ".join(c["problems"]) or "ok"
        lines.append(
            f"| {c['status']} | {c['queue']} | {c['page']} | {c['small_ms']:.2f} | "
            f"{c['big_ms']:.2f} | {c['ratio']:.2f} | {c['small_buffers']}/{c['big_buffers']} | "
            f"{', '.join(c['indexes'])} | {check} |"
        )
    worst = max(c["ratio"] for c in result["cases"])
    lines += ["", f"worst ratio big/small: {worst:.2f}"]
    return "\n".join(lines)


def main() -> None:
    """Parse the arguments, run, print the table (and write JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default="postgresql://root@127.0.0.1:5432/test")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep both schemas afterwards")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(table(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
