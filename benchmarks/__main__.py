"""Run sitq's benchmarks and print a markdown table; write the figures as JSON.

    python -m benchmarks [--backend sqlite] [--runs 3] [--tasks 20000] [--loop uvloop] [--json PATH]

Workloads (medians over ``--runs`` runs, each on a fresh store):

* enqueue (one at a time): ``await queue.enqueue(noop)`` in a loop, one client.
* enqueue_many: batches of 1,000.
* drain: tasks already queued, one worker *process* (``AsyncWorker``, concurrency 10),
  from the moment it is told to start until the last result is stored.
* latency: enqueue-to-result with an idle worker in another process, one task at a time;
  p50/p95/p99 in milliseconds.
* idle CPU: CPU seconds an idle worker process uses per wall second.

The dashboard beside a million stored tasks (``benchmarks/web.py``: each page over HTTP from
``sitq web``, on an almost empty store and beside ``--bulk`` tasks) is the subcommand ``web``;
the arguments after it are that benchmark's own::

    python -m benchmarks web [--backend sqlite] [--bulk 1000000] [--reps 30] [--runs 5]
                             [--json PATH]

Speed is measured here and only here; the test suite asserts no timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import tasks
from benchmarks.peers.sitq_peer import SitqNats, SitqPostgres, SitqRedis, SitqSqlite
from sitq import TaskQueue
from sitq._loop import run as run_loop

ROOT = Path(__file__).resolve().parent.parent


# The same isolated stores the peer benchmarks use for sitq: a temp file, a fresh schema, a fresh
# key prefix, a fresh stream; each removed afterwards.
STORES: dict[str, Callable[[], Any]] = {
    cls.backend: cls().store for cls in (SitqSqlite, SitqPostgres, SitqRedis, SitqNats)
}


class WorkerProcess:
    """A worker in its own process, driven over stdin."""

    def __init__(self, url: str, kind: str = "async", concurrency: int = 10) -> None:
        # The worker runs this checkout's sitq (src/), not whichever one is installed.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
        logging_on = os.environ.get("SITQ_BENCH_WORKER_LOG", "off") != "off"
        # With --worker-log, the worker's lines go to a real file, as a deployment's would.
        self._log = tempfile.TemporaryFile() if logging_on else None  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._worker", url, kind, str(concurrency)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self._expect("ready")

    def _expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"benchmark worker said {line!r}, expected {word!r}")

    def _send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def go(self) -> None:
        self._send("go")
        self._expect("started")

    def stop(self) -> None:
        self._send("stop")
        self.proc.wait(timeout=60)
        if self._log is not None:
            self._log.close()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_enqueue(url: str, n: int) -> float:
    async with TaskQueue(url) as queue:
        start = time.perf_counter()
        for _ in range(n):
            await queue.enqueue(tasks.noop)
        return n / (time.perf_counter() - start)


async def bench_enqueue_many(url: str, n: int, batch: int = 1000) -> float:
    async with TaskQueue(url) as queue:
        sizes = [min(batch, n - done) for done in range(0, n, batch)]
        start = time.perf_counter()
        for size in sizes:
            await queue.enqueue_many([(tasks.noop, ())] * size)
        return n / (time.perf_counter() - start)


async def bench_drain(
    url: str, n: int, func: Callable[[], Any] = tasks.noop, cpu: list[float] | None = None
) -> float:
    """Tasks per second a worker process drains ``n`` queued tasks at; the worker's CPU
    seconds for the drain are appended to ``cpu`` when given."""
    async with TaskQueue(url) as queue:
        ids: list[str] = []
        for done in range(0, n, 1000):
            ids += await queue.enqueue_many([(func, ())] * min(1000, n - done))
        worker = WorkerProcess(url)
        try:
            cpu_before = worker.cpu_seconds()
            start = time.perf_counter()
            worker.go()
            await queue.get_result(ids[-1], timeout=600)
            while True:
                done = sum(s.succeeded for s in await queue.stats())
                if done >= len(ids):
                    break
                await asyncio.sleep(0.01)
            rate = len(ids) / (time.perf_counter() - start)
            if cpu is not None:
                cpu.append(worker.cpu_seconds() - cpu_before)
            return rate
        finally:
            worker.stop()


async def bench_latency(url: str, n: int) -> dict[str, float]:
    async with TaskQueue(url) as queue:
        worker = WorkerProcess(url)
        try:
            worker.go()
            await queue.get_result(await queue.enqueue(tasks.noop), timeout=30)
            samples = []
            cpu_before, wall_before = worker.cpu_seconds(), time.perf_counter()
            for _ in range(n):
                start = time.perf_counter()
                result = await queue.get_result(await queue.enqueue(tasks.noop), timeout=30)
                samples.append((time.perf_counter() - start) * 1000)
                assert result is not None
            cpu_busy = worker.cpu_seconds() - cpu_before
            busy_wall = time.perf_counter() - wall_before
            await asyncio.sleep(2.0)
            idle_cpu = (worker.cpu_seconds() - cpu_before - cpu_busy) / 2.0
        finally:
            worker.stop()
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p95_ms": samples[int(len(samples) * 0.95) - 1],
        "p99_ms": samples[int(len(samples) * 0.99) - 1],
        "worker_cpu_per_task_ms": cpu_busy / n * 1000,
        "wall_s": busy_wall,
        "idle_cpu_fraction": idle_cpu,
    }


async def run_backend(name: str, runs: int, n: int, latency_n: int) -> dict[str, Any]:
    store = STORES[name]
    collected: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        collected.setdefault(key, []).append(value)

    for run in range(runs):
        async with store() as url:
            add("enqueue_per_s", await bench_enqueue(url, min(n, 5000)))
        if name == "postgres":
            async with store() as url:
                relaxed = f"{url}&synchronous_commit=off"
                add("enqueue_async_commit_per_s", await bench_enqueue(relaxed, min(n, 5000)))
        async with store() as url:
            add("enqueue_many_per_s", await bench_enqueue_many(url, n))
        async with store() as url:
            add("drain_per_s", await bench_drain(url, n))
        async with store() as url:
            add("drain_sleep_10ms_per_s", await bench_drain(url, min(n, 5000), tasks.sleep_10ms))
        async with store() as url:
            for key, value in (await bench_latency(url, latency_n)).items():
                add(f"latency_{key}", value)
        print(f"  {name}: run {run + 1}/{runs} done", file=sys.stderr, flush=True)
    return {
        "runs": collected,
        "median": {key: statistics.median(values) for key, values in collected.items()},
    }


ROWS = [
    ("enqueue, one at a time (tasks/s)", "enqueue_per_s", "{:,.0f}"),
    (
        "enqueue, one at a time, synchronous_commit=off (tasks/s)",
        "enqueue_async_commit_per_s",
        "{:,.0f}",
    ),
    ("enqueue_many, batches of 1,000 (tasks/s)", "enqueue_many_per_s", "{:,.0f}"),
    ("drain, 1 worker process, no-op (tasks/s)", "drain_per_s", "{:,.0f}"),
    ("drain, 1 worker process, 10 ms sleep (tasks/s)", "drain_sleep_10ms_per_s", "{:,.0f}"),
    ("enqueue-to-result p50 (ms)", "latency_p50_ms", "{:.2f}"),
    ("enqueue-to-result p95 (ms)", "latency_p95_ms", "{:.2f}"),
    ("enqueue-to-result p99 (ms)", "latency_p99_ms", "{:.2f}"),
    ("idle worker CPU (fraction of a core)", "latency_idle_cpu_fraction", "{:.4f}"),
]


def table(results: dict[str, Any]) -> str:
    names = list(results)
    lines = ["| workload | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt in ROWS:
        cells = [
            fmt.format(results[b]["median"][key]) if key in results[b]["median"] else "n/a"
            for b in names
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["web"]:
        from benchmarks.web import main as web

        web(sys.argv[2:], prog="python -m benchmarks web")
        return
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", action="append", choices=sorted(STORES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the client and the worker processes (default asyncio)",
    )
    parser.add_argument(
        "--worker-log",
        choices=["off", "text", "json"],
        default="off",
        help="the worker processes log one line per task at INFO, as text or JSON, to a file "
        "(default off: measures sitq without its task lines)",
    )
    parser.add_argument(
        "--worker-metrics",
        choices=["off", "on"],
        default="off",
        help="the worker processes count their tasks in Prometheus metrics and serve them "
        "(default off; python -m benchmarks.metrics_cost measures what they cost)",
    )
    parser.add_argument(
        "--json", type=Path, default=ROOT / "benchmarks" / "results" / "latest.json"
    )
    args = parser.parse_args()
    for name in ("runs", "tasks", "latency_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    os.environ["SITQ_LOOP"] = args.loop  # read by the worker processes
    os.environ["SITQ_BENCH_WORKER_LOG"] = args.worker_log
    os.environ["SITQ_BENCH_WORKER_METRICS"] = args.worker_metrics
    results = {}
    for name in args.backend or list(STORES):
        results[name] = run_loop(
            run_backend(name, args.runs, args.tasks, args.latency_samples), args.loop
        )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loop": args.loop,
        },
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(
        f"\n{report['date']}, {report['command']}, {args.loop} loop, medians of {args.runs} runs\n"
    )
    print(table(results))
    print(f"\nfigures: {args.json}")


if __name__ == "__main__":
    main()
