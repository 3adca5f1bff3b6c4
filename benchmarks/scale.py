"""Do SQLite claims stay fast when a million finished results wait to expire?

    python -m benchmarks.scale [--rows 1000000] [--pending 20000] [--reps 500] [--keep]

Everything goes through the public backend interface (``sitq.backends.base.Backend``) of a
``SQLiteBackend`` on a fresh file in a temporary directory; no worker runs, so payloads are
dummy bytes. Two stores are measured the same way:

* **empty store**: a fresh database holding ``--pending`` pending tasks and nothing else.
* **with N finished rows**: a second fresh database in which ``--rows`` tasks were enqueued
  (batches of 10,000) and then all finished (claimed in batches of 10,000 with a long lease,
  settled as ``success`` with a result that expires in a day), so the table holds ``--rows``
  finished rows with unexpired results; then ``--pending`` pending tasks are enqueued.

On each store, ``--reps`` times: ``claim(["default"], 10, "bench", lease=30)``, timed, then
``settle`` of a ``Finish`` for each claim, timed separately (median and p99 in microseconds).
Then ``get_task`` of a random finished id and ``enqueue`` of one task, ``--reps`` times each
(median and p99). Prints a markdown table and the database sizes, and writes the figures to
``benchmarks/results/scale.json``. With ``--keep`` the temporary directory is kept (for
``EXPLAIN QUERY PLAN`` by hand) and its path printed.

Speed is measured here and only here; the test suite asserts no timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sitq import SQLiteBackend
from sitq.models import Claim, Finish, NewTask, TaskStatus
from sitq.options import TaskOptions

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
QUEUE = "default"
BATCH = 10_000
CLAIM_LIMIT = 10
LEASE = 30.0
BUILD_LEASE = 3_600.0
RESULT_TTL = 86_400.0
PAYLOAD = b"\x80\x05benchmark-payload" + b"\x00" * 64
OPTIONS = TaskOptions().engine_options()
ROW_NAMES = ("claim 10", "settle 10", "get_task", "enqueue 1")


def log(message: str) -> None:
    """Progress, on stderr so the table on stdout stays clean."""
    print(message, file=sys.stderr, flush=True)


def new_tasks(n: int) -> list[NewTask]:
    now = time.time()
    return [
        NewTask(
            id=uuid.uuid4().hex,
            queue=QUEUE,
            payload=PAYLOAD,
            options=OPTIONS,
            priority=0,
            eta=now,
            enqueued_at=now,
            result_ttl=RESULT_TTL,
        )
        for _ in range(n)
    ]


def finishes(claims: list[Claim]) -> list[Finish]:
    now = time.time()
    return [
        Finish(
            claim=c.ref,
            status=TaskStatus.SUCCESS,
            value=b"x",
            error=None,
            traceback=None,
            finished_at=now,
            expires_at=now + RESULT_TTL,
        )
        for c in claims
    ]


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(samples_us: list[float]) -> dict[str, float]:
    return {
        "median_us": statistics.median(samples_us),
        "p99_us": percentile(samples_us, 99),
        "max_us": max(samples_us),
        "n": len(samples_us),
    }


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    """The call's result and its wall time in microseconds (its body runs only when awaited)."""
    start = time.perf_counter_ns()
    result = await call
    return result, (time.perf_counter_ns() - start) / 1_000


@dataclass
class Store:
    """One database file under test and the finished ids it holds."""

    path: Path
    backend: SQLiteBackend
    finished_ids: list[str] = field(default_factory=list)

    @classmethod
    async def open(cls, path: Path) -> Store:
        backend = SQLiteBackend(path)
        await backend.connect()
        return cls(path, backend)

    def size_bytes(self) -> dict[str, int]:
        sizes = {}
        for suffix in ("", "-wal"):
            file = Path(f"{self.path}{suffix}")
            sizes["db" if not suffix else "wal"] = file.stat().st_size if file.exists() else 0
        return sizes


async def enqueue_all(store: Store, n: int, what: str) -> float:
    start = time.perf_counter()
    done = 0
    while done < n:
        batch = new_tasks(min(BATCH, n - done))
        stored = await store.backend.enqueue(batch)
        assert all(stored), "a fresh id was not stored"
        done += len(batch)
        if done % (10 * BATCH) == 0 or done == n:
            rate = done / (time.perf_counter() - start)
            log(f"  {what}: enqueued {done:,}/{n:,} ({rate:,.0f}/s)")
    return time.perf_counter() - start


async def finish_all(store: Store, n: int) -> float:
    start = time.perf_counter()
    done = 0
    while done < n:
        claims = await store.backend.claim([QUEUE], min(BATCH, n - done), "builder", BUILD_LEASE)
        if not claims:
            raise RuntimeError(f"claim found nothing after {done:,} of {n:,} tasks")
        applied = await store.backend.settle(finishes(claims))
        assert all(applied), "a settlement of a fresh claim did not apply"
        store.finished_ids.extend(c.task_id for c in claims)
        done += len(claims)
        if done % (10 * BATCH) == 0 or done == n:
            rate = done / (time.perf_counter() - start)
            log(f"  finished {done:,}/{n:,} ({rate:,.0f}/s)")
    return time.perf_counter() - start


async def measure(store: Store, reps: int, label: str) -> dict[str, dict[str, float]]:
    """claim 10 + settle 10, then get_task and enqueue 1, ``reps`` times each."""
    backend = store.backend
    claim_us: list[float] = []
    settle_us: list[float] = []
    for i in range(reps):
        claims, t_claim = await timed(backend.claim([QUEUE], CLAIM_LIMIT, "bench", LEASE))
        if len(claims) != CLAIM_LIMIT:
            raise RuntimeError(f"{label}: claim {i} got {len(claims)} tasks, not {CLAIM_LIMIT}")
        applied, t_settle = await timed(backend.settle(finishes(claims)))
        assert all(applied), "a settlement of a fresh claim did not apply"
        store.finished_ids.extend(c.task_id for c in claims)
        claim_us.append(t_claim)
        settle_us.append(t_settle)

    rng = random.Random(1)
    get_us: list[float] = []
    for _ in range(reps):
        task_id = rng.choice(store.finished_ids)
        snap, t_get = await timed(backend.get_task(task_id))
        assert snap is not None, task_id
        assert snap.status is TaskStatus.SUCCESS, snap
        get_us.append(t_get)

    enqueue_us: list[float] = []
    for _ in range(reps):
        stored, t_enq = await timed(backend.enqueue(new_tasks(1)))
        assert stored == [True]
        enqueue_us.append(t_enq)

    figures = {
        "claim 10": summary(claim_us),
        "settle 10": summary(settle_us),
        "get_task": summary(get_us),
        "enqueue 1": summary(enqueue_us),
    }
    for name, f in figures.items():
        log(f"  {label}: {name}: median {f['median_us']:.0f} us, p99 {f['p99_us']:.0f} us")
    return figures


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def table(empty: dict[str, Any], big: dict[str, Any], rows: int) -> str:
    head = f"| µs (median / p99) | empty store | with {rows:,} finished rows |"
    lines = [head, "|---|---:|---:|"]
    for name in ROW_NAMES:
        a, b = empty[name], big[name]
        lines.append(
            f"| {name} | {a['median_us']:,.0f} / {a['p99_us']:,.0f} "
            f"| {b['median_us']:,.0f} / {b['p99_us']:,.0f} |"
        )
    return "\n".join(lines)


async def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    log(f"empty store: {args.pending:,} pending tasks")
    empty = await Store.open(tmp / "empty.db")
    try:
        await enqueue_all(empty, args.pending, "empty store")
        empty_figures = await measure(empty, args.reps, "empty store")
    finally:
        await empty.backend.close()
    empty_size = empty.size_bytes()

    log(f"big store: {args.rows:,} finished rows")
    big = await Store.open(tmp / "big.db")
    try:
        build_start = time.perf_counter()
        enqueue_s = await enqueue_all(big, args.rows, "big store")
        finish_s = await finish_all(big, args.rows)
        build_s = time.perf_counter() - build_start
        log(f"  built in {build_s:.1f} s (enqueue {enqueue_s:.1f} s, finish {finish_s:.1f} s)")
        await enqueue_all(big, args.pending, "big store pending")
        big_size_before = big.size_bytes()
        big_figures = await measure(big, args.reps, f"{args.rows:,} finished")
    finally:
        await big.backend.close()
    big_size = big.size_bytes()

    return {
        "empty": {"figures": empty_figures, "size_bytes": empty_size},
        "big": {
            "figures": big_figures,
            "size_bytes": big_size,
            "size_bytes_before_measuring": big_size_before,
            "build_s": build_s,
            "enqueue_s": enqueue_s,
            "finish_s": finish_s,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished rows to build")
    parser.add_argument("--pending", type=int, default=20_000, help="pending tasks to claim from")
    parser.add_argument("--reps", type=int, default=500, help="repetitions of each measurement")
    parser.add_argument("--keep", action="store_true", help="keep the temporary databases")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args()
    if args.pending < args.reps * CLAIM_LIMIT:
        need = args.reps * CLAIM_LIMIT
        parser.error(f"--pending must be at least --reps x {CLAIM_LIMIT} = {need}")
    if args.rows < 1:
        parser.error("--rows must be at least 1")

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="sitq-scale-"))
    try:
        results = asyncio.run(run(args, tmp))
    finally:
        if args.keep:
            log(f"databases kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    total_s = time.perf_counter() - started

    empty, big = results["empty"], results["big"]
    print(table(empty["figures"], big["figures"], args.rows))
    print()
    print(
        f"database file size (after close, WAL checkpointed): "
        f"empty store {mib(empty['size_bytes']['db'])}, "
        f"with {args.rows:,} finished rows {mib(big['size_bytes']['db'])}"
    )
    print(f"build: {big['build_s']:.1f} s; total run: {total_s:.1f} s")

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.scale " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
        },
        "params": {
            "rows": args.rows,
            "pending": args.pending,
            "reps": args.reps,
            "claim_limit": CLAIM_LIMIT,
            "lease_s": LEASE,
            "batch": BATCH,
        },
        "results": results,
        "total_s": total_s,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    shown = args.json.relative_to(ROOT) if args.json.is_relative_to(ROOT) else args.json
    print(f"figures: {shown}")


if __name__ == "__main__":
    main()
