"""Does a page of ``list_tasks`` on Redis cost the same beside a million stored tasks?

    python -m benchmarks.listing_redis [--url redis://127.0.0.1:6379/0] [--tasks 1000000]
                                       [--runs 3] [--reps 30] [--depth 100000] [--json PATH]

Two stores are built on the server under key prefixes of their own (``bench_list_<hex>_small``
and ``..._big``, deleted afterwards with SCAN + UNLINK, never FLUSHDB), both through the
public backend interface of ``RedisBackend``, so they hold exactly the structures the backend
builds (task hashes, ``ready``/``sched``/``sl`` ranks, ``run``, ``fin:s|f|c`` and ``done:*``
sets, id index entries). Filling is fast because each step is one pipelined round trip for a
whole batch: ``enqueue`` of up to 10,000 tasks at a time (one script call per 100 tasks),
``claim`` of 1,000 at a time with a one-hour lease, ``settle`` of those claims in one call. The
queues take turns (10,000 tasks each on the big store, 40 on the small one), so each queue's
tasks start and finish throughout the listing rather than in one block.

Each store has four queues (``q0``..``q3``); each queue holds, as fractions of its tasks:
60 % succeeded, 15 % failed, 5 % cancelled (finished by their worker), 5 % running (claimed,
never settled), 10 % pending and due, 5 % scheduled an hour ahead. The big store holds
``--tasks`` tasks; the small one 240 tasks per queue and status (pending split 120 due,
120 scheduled: 4,800 in all), just enough for a deep page.

Timed: ``backend.list_tasks(status, queue, 50, after, now)`` (one round trip; the engine's
``TaskQueue.list_tasks`` adds only cursor encoding on top), for each status, with the queue
filter ``q0`` and without one, for the first page and for a deep page (``after`` taken by
following the positions with pages of 1,000 up to ``--depth`` tasks in, or as deep as the
status allows while every queue listed still has a full page after it). ``--reps`` calls per
case and run; the median per run,
then the median of the ``--runs`` runs, in microseconds; ratio = big / small (target <= 2).

Speed is measured here and only here; the test suite asserts no timings.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sitq.backends.base import Backend
from sitq.backends.redis import RedisBackend
from sitq.models import Claim, Finish, NewTask, TaskStatus
from sitq.options import TaskOptions

QUEUES = ("q0", "q1", "q2", "q3")
PAGE = 50
FOLLOW = 1000
BATCH = 10_000
CLAIM_BATCH = 1000
BUILD_LEASE = 3_600.0
RESULT_TTL = 86_400.0
PAYLOAD = b"\x80\x05benchmark-payload" + b"\x00" * 64
OPTIONS = TaskOptions().engine_options()
FUNCTION = "benchmarks.tasks.noop"
STATUSES = (
    TaskStatus.PENDING,
    TaskStatus.RUNNING,
    TaskStatus.SUCCESS,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
)
# Per queue: how many tasks of each kind, as a fraction of the queue's tasks.
MIX = {
    "success": 0.60,
    "failed": 0.15,
    "cancelled": 0.05,
    "running": 0.05,
    "due": 0.10,
    "scheduled": 0.05,
}
SMALL = {
    "success": 240,
    "failed": 240,
    "cancelled": 240,
    "running": 240,
    "due": 120,
    "scheduled": 120,
}


def log(message: str) -> None:
    """Progress, on stderr so the table on stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


def new_tasks(queue: str, n: int, eta_in: float = 0.0) -> list[NewTask]:
    now = time.time()
    return [
        NewTask(
            id=uuid.uuid4().hex,
            queue=queue,
            payload=PAYLOAD,
            options=OPTIONS,
            priority=i % 3,
            eta=now + eta_in,
            enqueued_at=now,
            result_ttl=RESULT_TTL,
            fresh_id=True,
            function=FUNCTION,
        )
        for i in range(n)
    ]


def finishes(claims: list[Claim], status: TaskStatus) -> list[Finish]:
    now = time.time()
    return [
        Finish(
            claim=c.ref,
            status=status,
            value=b"x" if status is TaskStatus.SUCCESS else None,
            error=None if status is TaskStatus.SUCCESS else "ValueError: benchmark",
            traceback=None,
            finished_at=now,
            expires_at=now + RESULT_TTL,
        )
        for c in claims
    ]


async def enqueue(backend: Backend, queue: str, n: int, eta_in: float = 0.0) -> None:
    for start in range(0, n, BATCH):
        await backend.enqueue(new_tasks(queue, min(BATCH, n - start), eta_in))


async def claim_and_settle(backend: Backend, queue: str, n: int, status: TaskStatus | None) -> None:
    """Claim ``n`` due tasks of ``queue``; finish them as ``status`` (``None``: keep them
    running)."""
    left = n
    while left > 0:
        claims = await backend.claim([queue], min(CLAIM_BATCH, left), "bench", BUILD_LEASE)
        if not claims:
            raise RuntimeError(f"{queue}: {left} tasks short")
        left -= len(claims)
        if status is not None:
            await backend.settle(finishes(claims, status))


async def fill(
    backend: Backend,
    per_queue: dict[str, int],
    chunk: int,
    queues: Sequence[str] = QUEUES,
) -> None:
    """Build one store: every queue of ``queues`` gets ``per_queue`` tasks of each kind
    (``MIX``'s keys), in rounds of ``chunk`` tasks per queue taking turns, so that each queue's
    tasks start and finish throughout the listing (as with workers on several queues), not in
    one block."""
    for kind in ("success", "failed", "cancelled", "running"):
        status = None if kind == "running" else TaskStatus(kind)
        for start in range(0, per_queue[kind], chunk):
            for queue in queues:
                n = min(chunk, per_queue[kind] - start)
                await enqueue(backend, queue, n)
                await claim_and_settle(backend, queue, n, status)
        log(f"  {kind} filled")
    for queue in queues:
        await enqueue(backend, queue, per_queue["due"])
        await enqueue(backend, queue, per_queue["scheduled"], eta_in=3600.0)


async def deep_after(
    backend: RedisBackend, status: TaskStatus, queue: str | None, depth: int, total: int
) -> tuple[str | None, int]:
    """The position ``depth`` tasks into the listing of ``total`` tasks (followed by pages of
    1,000), leaving a full page after it on every queue listed (so that the page costs what
    it costs at that depth of any store); and how deep that is."""
    target = max(0, min(depth, total - PAGE * (1 if queue is not None else len(QUEUES))))
    after = None
    walked = 0
    while walked < target:
        step = min(FOLLOW, target - walked)
        page = await backend.list_tasks(status, queue, step, after, time.time())
        walked += len(page.tasks)
        after = page.after
        if after is None:
            break
    return after, walked


def total(per_queue: dict[str, int], status: TaskStatus, queue: str | None) -> int:
    """How many tasks of ``status`` a listing of ``queue`` (or of every queue) holds."""
    kinds = ("due", "scheduled") if status is TaskStatus.PENDING else (status.value,)
    n = sum(per_queue[kind] for kind in kinds)
    return n if queue is not None else n * len(QUEUES)


async def time_page(
    backend: RedisBackend, status: TaskStatus, queue: str | None, after: str | None, reps: int
) -> float:
    """Median wall time of ``reps`` page reads, in microseconds (each must return a full
    page)."""
    samples = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        page = await backend.list_tasks(status, queue, PAGE, after, time.time())
        samples.append((time.perf_counter_ns() - start) / 1_000)
        if len(page.tasks) != PAGE:
            raise RuntimeError(f"{status} {queue} page of {len(page.tasks)}")
    return statistics.median(samples)


@dataclass
class Store:
    """One prefix under test."""

    name: str
    prefix: str
    backend: RedisBackend
    cursors: dict[tuple[str, str | None], tuple[str | None, int]]


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key of ``prefix`` (SCAN + UNLINK in batches)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
            batch.append(key)
            if len(batch) >= 5_000:
                deleted += await client.unlink(*batch)
                batch = []
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    base = f"bench_list_{uuid.uuid4().hex[:8]}"
    per_big = {kind: round(args.tasks / len(QUEUES) * share) for kind, share in MIX.items()}
    stores: list[Store] = []
    results: dict[str, Any] = {}
    try:
        for name, per_queue, chunk in (("small", SMALL, 40), ("big", per_big, BATCH)):
            prefix = f"{base}_{name}"
            backend = RedisBackend(url=args.url, prefix=prefix)
            await backend.connect()
            store = Store(name, prefix, backend, {})
            stores.append(store)
            started = time.perf_counter()
            log(f"filling {name} ({sum(per_queue.values()) * len(QUEUES):,} tasks) ...")
            await fill(backend, per_queue, chunk)
            results[f"fill_{name}_s"] = round(time.perf_counter() - started, 1)
            log(f"  filled in {results[f'fill_{name}_s']} s; finding deep positions ...")
            for status in STATUSES:
                for queue in (QUEUES[0], None):
                    store.cursors[(status.value, queue)] = await deep_after(
                        backend, status, queue, args.depth, total(per_queue, status, queue)
                    )
        cases: dict[str, dict[str, list[float]]] = {}
        for run in range(args.runs):
            log(f"run {run + 1} of {args.runs}")
            # Interleaved: each case on the small store, then on the big one.
            for status in STATUSES:
                for queue in (QUEUES[0], None):
                    for page in ("first", "deep"):
                        case = f"{status.value} {'q0' if queue else 'all'} {page}"
                        for store in stores:
                            after, _ = store.cursors[(status.value, queue)]
                            us = await time_page(
                                store.backend,
                                status,
                                queue,
                                None if page == "first" else after,
                                args.reps,
                            )
                            cases.setdefault(case, {}).setdefault(store.name, []).append(us)
        rows = {}
        for case, by_store in cases.items():
            small = statistics.median(by_store["small"])
            big = statistics.median(by_store["big"])
            status_value, scope, page = case.split()
            queue = QUEUES[0] if scope == "q0" else None
            rows[case] = {
                "small_us": round(small, 1),
                "big_us": round(big, 1),
                "ratio": round(big / small, 2),
                "depth_small": stores[0].cursors[(status_value, queue)][1] if page == "deep" else 0,
                "depth_big": stores[1].cursors[(status_value, queue)][1] if page == "deep" else 0,
            }
        results["cases"] = rows
        info = await stores[1].backend.stats(time.time())
        results["big_stats"] = [dataclasses.asdict(s) for s in info]
        return results
    finally:
        for store in stores:
            await store.backend.close()
            if not args.keep:
                log(f"deleting {store.prefix} ...")
                log(f"  {await delete_prefix(args.url, store.prefix):,} keys deleted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--depth", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the keys (for inspection)")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    results["when"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["python"] = platform.python_version()
    results["tasks"] = args.tasks
    print(f"\n{results['when']}, {args.tasks:,} tasks beside, medians of {args.runs} runs\n")
    print("| page (50 tasks) | depth small / big | small (µs) | 1M store (µs) | ratio |")
    print("|---|---:|---:|---:|---:|")
    for case, row in results["cases"].items():
        depth = f"{row['depth_small']:,} / {row['depth_big']:,}" if case.endswith("deep") else "0"
        print(
            f"| {case} | {depth} | {row['small_us']:,.0f} | {row['big_us']:,.0f} | "
            f"{row['ratio']:.2f} |"
        )
    print(f"\nfill: small {results['fill_small_s']} s, big {results['fill_big_s']} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"figures: {args.json}")


if __name__ == "__main__":
    main()
