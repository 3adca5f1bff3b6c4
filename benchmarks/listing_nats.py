"""Does a NATS listing page cost the same beside 100,000 stored tasks as on an almost empty store?

    python -m benchmarks.listing_nats [--tasks 100000] [--reps 15] [--limit 50]

Everything goes through the public backend interface of a ``NATSBackend`` on the server at
``SITQ_BENCH_NATS_URL`` (default ``nats://127.0.0.1:4222``); no worker runs, so payloads are
dummy bytes. Two stores (a fresh stream each, removed at the end):

* **small**: 60 tasks in each state, on two queues (``a`` 90 %, ``b`` 10 %).
* **large**: ``--tasks`` tasks in the same proportions as below, on the same two queues:
  enqueued in batches of 1,000, 80 % claimed (lease one hour), of those 50/80 settled as
  success, 20/80 as failed and the rest left running; half of the others cancelled.
  So: 50 % success, 20 % failed, 10 % running, 10 % cancelled, 10 % pending.

On each store, for each state and for the queue filters none, ``a`` and ``b``: ``--reps``
times ``list_tasks(status, queue, --limit, after)`` with ``after=None`` (the first page) and
with a position in the middle of the index (a deep page), timed; the median in milliseconds.
Prints a markdown table and writes ``benchmarks/results/listing_nats.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sitq.backends.base import Backend
from sitq.backends.nats import NATSBackend
from sitq.models import Finish, NewTask, TaskStatus
from sitq.options import TaskOptions

URL = os.environ.get("SITQ_BENCH_NATS_URL", "nats://127.0.0.1:4222")
ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"\x80\x05benchmark-payload" + b"\x00" * 64
OPTIONS = TaskOptions().engine_options()
STATES = [
    TaskStatus.PENDING,
    TaskStatus.RUNNING,
    TaskStatus.SUCCESS,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
]


def _tasks(n: int, queue: str) -> list[NewTask]:
    now = time.time()
    return [
        NewTask(
            id=uuid.uuid4().hex,
            queue=queue,
            payload=PAYLOAD,
            options=OPTIONS,
            priority=0,
            eta=now,
            enqueued_at=now,
            result_ttl=86_400.0,
            fresh_id=True,
            function="benchmarks.listing_nats.noop",
        )
        for _ in range(n)
    ]


# Shares of a store's tasks: of each queue's tasks, each status's fraction.
MIX = {
    TaskStatus.SUCCESS: 0.5,
    TaskStatus.FAILED: 0.2,
    TaskStatus.RUNNING: 0.1,
    TaskStatus.CANCELLED: 0.1,
    TaskStatus.PENDING: 0.1,
}
QUEUE_SHARES = (("a", 0.9), ("b", 0.1))


async def fill(
    backend: Backend,
    total: int,
    queues: Sequence[tuple[str, float]] = QUEUE_SHARES,
    mix: Mapping[TaskStatus, float] = MIX,
) -> None:
    """``total`` tasks, each queue of ``queues`` its share, each status its share of ``mix``
    (by default 50 % success, 20 % failed, 10 % running, 10 % cancelled, 10 % pending; 90 %
    on queue ``a``, 10 % on ``b``): enqueued in batches of 1,000, claimed (lease one hour) and
    settled or left running, the cancelled ones taken from the pending."""
    for queue, share in queues:
        n = int(total * share)
        for start in range(0, n, 1000):
            await backend.enqueue(_tasks(min(1000, n - start), queue))
        claimed = 0
        to_success = int(n * mix[TaskStatus.SUCCESS])
        to_failed = int(n * mix[TaskStatus.FAILED])
        want = to_success + to_failed + int(n * mix[TaskStatus.RUNNING])
        to_cancel = int(n * mix[TaskStatus.CANCELLED])
        done = 0
        while claimed < want:
            claims = await backend.claim([queue], min(256, want - claimed), "bench", 3600.0)
            if not claims:
                break
            claimed += len(claims)
            settle = []
            now = time.time()
            for c in claims:
                if done < to_success + to_failed:
                    status = TaskStatus.SUCCESS if done < to_success else TaskStatus.FAILED
                    error = None if status is TaskStatus.SUCCESS else "ValueError: bench"
                    settle.append(Finish(c.ref, status, b"v", error, None, now, now + 86_400))
                    done += 1
            if settle:
                await backend.settle(settle)
        pending: list[str] = []
        after = None
        while len(pending) < to_cancel:
            page = await backend.list_tasks(TaskStatus.PENDING, queue, 1000, after, 0)
            pending += [s.task_id for s in page.tasks]
            if page.after is None:
                break
            after = page.after
        for task_id in pending[:to_cancel]:
            await backend.cancel(task_id, time.time())
        print(f"  queue {queue}: {n} tasks stored", file=sys.stderr, flush=True)


async def _deep(
    backend: NATSBackend, status: TaskStatus, queue: str | None, step: int
) -> str | None:
    """The position halfway through the listing (found by paging through its first half)."""
    listed: list[str] = []
    positions: list[str | None] = []
    after = None
    while True:
        page = await backend.list_tasks(status, queue, step, after, time.time())
        listed += [s.task_id for s in page.tasks]
        positions.append(page.after)
        if page.after is None:
            break
        after = page.after
    return positions[max(len(positions) // 2 - 1, 0)]


async def _measure(backend: NATSBackend, reps: int, limit: int, step: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for status in STATES:
        for queue in (None, "a", "b"):
            for depth in ("first", "deep"):
                after = None
                if depth == "deep":
                    after = await _deep(backend, status, queue, step)
                times = []
                count = 0
                for _ in range(reps):
                    start = time.perf_counter()
                    page = await backend.list_tasks(status, queue, limit, after, time.time())
                    times.append((time.perf_counter() - start) * 1000)
                    count = len(page.tasks)
                out[f"{status.value}|{queue or '-'}|{depth}"] = statistics.median(times)
                out[f"{status.value}|{queue or '-'}|{depth}|n"] = count
    return out


async def _store(total: int, reps: int, limit: int, small: bool) -> dict[str, float]:
    stream = "BENCHLIST" + uuid.uuid4().hex[:12].upper()
    backend = NATSBackend(URL, stream=stream, request_timeout=60)
    await backend.connect()
    try:
        started = time.perf_counter()
        if small:
            await fill(backend, 600)
        else:
            await fill(backend, total)
        print(f"  filled in {time.perf_counter() - started:.0f} s", flush=True)
        return await _measure(backend, reps, limit, 10 if small else 1000)
    finally:
        client = backend._client
        for name in (stream, f"KV_{stream}", f"IX_{stream}"):
            await client.api(f"STREAM.DELETE.{name}", None, ok=(10059,))
        await backend.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    print("small store", flush=True)
    small = await _store(args.tasks, args.reps, args.limit, small=True)
    print(f"large store ({args.tasks} tasks)", flush=True)
    large = await _store(args.tasks, args.reps, args.limit, small=False)
    return {"small": small, "large": large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    figures = asyncio.run(main_async(args))
    print()
    print(f"| state | queue | page | small store ms | {args.tasks:,} tasks ms | ratio | rows |")
    print("|---|---|---|---:|---:|---:|---:|")
    for key, small_ms in figures["small"].items():
        if key.endswith("|n"):
            continue
        status, queue, depth = key.split("|")
        large_ms = figures["large"][key]
        rows = int(figures["large"][key + "|n"])
        print(
            f"| {status} | {queue} | {depth} | {small_ms:.2f} | {large_ms:.2f} | "
            f"{large_ms / small_ms:.2f} | {rows} |"
        )
    out = ROOT / "benchmarks" / "results" / "listing_nats.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), **figures}, indent=2))


if __name__ == "__main__":
    main()
