"""A bounded soak: many no-op tasks through several worker processes, with each worker's memory
sampled, failing if it grows after warm-up.

    python -m benchmarks.soak [--backend sqlite] [--tasks 100000] [--workers 4] [--bound-mb 20]
    python -m benchmarks.soak --url redis://127.0.0.1:7000/0 --tasks 1000000  # a store of yours

Per backend (each on a fresh store, removed afterwards, as in ``python -m benchmarks``):

* ``--workers`` worker processes (``AsyncWorker``, ``--concurrency`` 10 each) are started and
  connected; then a producer feeds ``--tasks`` no-op tasks with ``enqueue_many`` (batches of
  1,000), keeping at most ``--backlog`` tasks queued, so the run is a steady stream rather than
  one big backlog.
* Every second the resident set size (``VmRSS`` in ``/proc/<pid>/status``) of each worker process
  is sampled.
* Per worker the report gives RSS at start (connected, before the first task), after warm-up
  (the first sample once ``--warmup`` of the tasks are done), at the end (the last sample, all
  tasks done) and the peak, and the growth after warm-up: end minus after-warm-up.
* Every task must have succeeded exactly once (the workers' counters and the backend's count of
  results both equal ``--tasks``), and no worker may grow by more than ``--bound-mb`` after
  warm-up; otherwise the exit status is 1.

This is not part of the test suite: it takes minutes, and asserts a memory bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000


# -- the worker process --------------------------------------------------------------------------


async def child(url: str, kind: str, concurrency: int) -> None:
    """One soak worker: connects, says ``ready``, starts on ``go``, then reports its counters
    (``count <succeeded> <failed>``) twice a second until ``stop``."""
    from benchmarks._worker import ready_worker

    worker, reader = await ready_worker(url, kind, concurrency)

    async def report() -> None:
        while True:
            counters = worker.counters
            print(f"count {counters['succeeded']} {counters['failed']}", flush=True)
            await asyncio.sleep(0.5)

    reporter: asyncio.Task[None] | None = None
    while line := (await reader.readline()).decode().strip():
        if line == "go":
            await worker.start()
            reporter = asyncio.create_task(report())
        elif line == "stop":
            break
    await worker.stop()
    if reporter is not None:
        reporter.cancel()
        with suppress(asyncio.CancelledError):
            await reporter
    counters = worker.counters
    print(f"final {counters['succeeded']} {counters['failed']}", flush=True)
    await worker.backend.close()


# -- the driver ----------------------------------------------------------------------------------


def rss_mb(pid: int) -> float | None:
    """The resident set size of a process in MB (``VmRSS``), ``None`` once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class Worker:
    """One soak worker process as the driver sees it."""

    proc: asyncio.subprocess.Process
    succeeded: int = 0
    failed: int = 0
    final: tuple[int, int] | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)  # (elapsed s, RSS MB)
    reader: asyncio.Task[None] | None = None

    async def expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        line = (await self.proc.stdout.readline()).decode().strip()
        if line != word:
            raise RuntimeError(f"soak worker {self.proc.pid} said {line!r}, expected {word!r}")

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word.encode() + b"\n")

    async def read_counts(self) -> None:
        assert self.proc.stdout is not None
        while line := (await self.proc.stdout.readline()).decode():
            kind, _, rest = line.strip().partition(" ")
            if kind in ("count", "final"):
                succeeded, failed = (int(x) for x in rest.split())
                self.succeeded, self.failed = succeeded, failed
                if kind == "final":
                    self.final = (succeeded, failed)


async def start_worker(url: str, kind: str, concurrency: int) -> Worker:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.soak",
        "--child",
        url,
        kind,
        str(concurrency),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    worker = Worker(proc)
    await worker.expect("ready")
    return worker


async def soak(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one soak against ``url``; the figures, with ``ok`` saying whether it passed."""
    from benchmarks import tasks
    from sitq import TaskQueue

    workers: list[Worker] = []
    try:
        workers = list(
            await asyncio.gather(
                *(start_worker(url, args.kind, args.concurrency) for _ in range(args.workers))
            )
        )
        async with TaskQueue(url, result_ttl=args.result_ttl) as queue:
            start = time.monotonic()
            for w in workers:
                w.samples.append((0.0, rss_mb(w.proc.pid) or 0.0))
                w.send("go")
                w.reader = asyncio.create_task(w.read_counts())
            warmup_at: float | None = None
            warmup_done = int(args.tasks * args.warmup)
            enqueued = 0
            next_sample = start + 1.0
            last_progress = (0, start)
            while True:
                done = sum(w.succeeded + w.failed for w in workers)
                if enqueued < args.tasks and enqueued - done < args.backlog:
                    n = min(BATCH, args.tasks - enqueued)
                    await queue.enqueue_many([(tasks.noop, ())] * n)
                    enqueued += n
                    continue
                now = time.monotonic()
                warm = warmup_at is None and done >= warmup_done
                if now >= next_sample or warm or done >= args.tasks:
                    for w in workers:
                        w.samples.append((now - start, rss_mb(w.proc.pid) or 0.0))
                    next_sample = now + 1.0
                    if warm:
                        warmup_at = now - start
                    print(
                        f"  {args.current}: {done:,}/{args.tasks:,} done, {now - start:.0f} s, "
                        "RSS " + " ".join(f"{w.samples[-1][1]:.1f}" for w in workers) + " MB",
                        file=sys.stderr,
                        flush=True,
                    )
                if done >= args.tasks:
                    break
                if done > last_progress[0]:
                    last_progress = (done, now)
                elif now - last_progress[1] > args.stall:
                    raise RuntimeError(f"no task finished for {args.stall:g} s at {done:,} done")
                if any(w.proc.returncode is not None for w in workers):
                    raise RuntimeError("a soak worker exited before the end")
                await asyncio.sleep(0.05)
            elapsed = time.monotonic() - start
            for w in workers:
                w.send("stop")
            await asyncio.gather(*(w.proc.wait() for w in workers))
            await asyncio.gather(*(w.reader for w in workers if w.reader is not None))
            stats = await queue.stats()
    finally:
        for w in workers:
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
    assert warmup_at is not None
    executed = sum(w.final[0] if w.final else w.succeeded for w in workers)
    failed = sum(w.final[1] if w.final else w.failed for w in workers)
    results = sum(s.succeeded for s in stats)
    per_worker = []
    for w in workers:
        warm = next(rss for t, rss in w.samples if t >= warmup_at)
        end = w.samples[-1][1]
        per_worker.append(
            {
                "pid": w.proc.pid,
                "tasks": w.final[0] if w.final else w.succeeded,
                "rss_start_mb": round(w.samples[0][1], 1),
                "rss_after_warmup_mb": round(warm, 1),
                "rss_end_mb": round(end, 1),
                "rss_peak_mb": round(max(rss for _, rss in w.samples), 1),
                "growth_after_warmup_mb": round(end - warm, 1),
                "samples": len(w.samples),
            }
        )
    worst = max(p["growth_after_warmup_mb"] for p in per_worker)
    ok = executed == args.tasks and failed == 0 and results == args.tasks and worst <= args.bound_mb
    return {
        "tasks": args.tasks,
        "executed": executed,
        "failed": failed,
        "results": results,
        "seconds": round(elapsed, 1),
        "tasks_per_s": round(args.tasks / elapsed),
        "warmup_at_s": round(warmup_at, 1),
        "workers": per_worker,
        "worst_growth_mb": worst,
        "bound_mb": args.bound_mb,
        "ok": ok,
    }


def report(name: str, figures: dict[str, Any]) -> str:
    lines = [
        f"{name}: {figures['tasks']:,} tasks in {figures['seconds']} s "
        f"({figures['tasks_per_s']:,}/s), executed {figures['executed']:,}, failed "
        f"{figures['failed']}, results {figures['results']:,}; warm-up ended at "
        f"{figures['warmup_at_s']} s",
        "| worker | tasks | RSS start | after warm-up | end | peak | growth after warm-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, p in enumerate(figures["workers"], 1):
        lines.append(
            f"| {i} | {p['tasks']:,} | {p['rss_start_mb']} MB | {p['rss_after_warmup_mb']} MB | "
            f"{p['rss_end_mb']} MB | {p['rss_peak_mb']} MB | {p['growth_after_warmup_mb']:+} MB |"
        )
    verdict = "PASS" if figures["ok"] else "FAIL"
    lines.append(
        f"{verdict}: worst growth after warm-up {figures['worst_growth_mb']:+} MB "
        f"(bound {figures['bound_mb']} MB); median end RSS "
        f"{statistics.median(p['rss_end_mb'] for p in figures['workers']):.1f} MB"
    )
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return 0
    from benchmarks.__main__ import STORES

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", action="append", choices=sorted(STORES))
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--kind", choices=("async", "thread"), default="async")
    parser.add_argument("--bound-mb", type=float, default=20.0, help="default: %(default)s")
    parser.add_argument(
        "--warmup", type=float, default=0.2, help="fraction of the tasks (default %(default)s)"
    )
    parser.add_argument("--backlog", type=int, default=10_000, help="most tasks queued at once")
    parser.add_argument("--result-ttl", type=float, default=3600.0)
    parser.add_argument("--stall", type=float, default=120.0, help="give up after this long idle")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--url", help="soak this backend URL as it is (a store of your own) instead of fresh ones"
    )
    args = parser.parse_args()
    results: dict[str, Any] = {}
    if args.url:
        args.current = "url"
        results["url"] = asyncio.run(soak(args.url, args))
        print(report(args.url, results["url"]), flush=True)
    for name in [] if args.url else args.backend or list(STORES):
        args.current = name

        async def run(backend: str = name) -> dict[str, Any]:
            async with STORES[backend]() as url:
                return await soak(url, args)

        results[name] = asyncio.run(run())
        print(report(name, results[name]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
