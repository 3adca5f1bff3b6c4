"""What worker metrics cost: the drain of ``python -m benchmarks`` with the worker's metrics
off and on, taking turns.

    python -m benchmarks.metrics_cost [--backend sqlite] [--rounds 9] [--tasks 10000] [--micro]

Each round drains a fresh store twice (off, on), so that the machine's drift touches both
alike; the medians of the drain rate and of the worker process's CPU time per task, and the
cost of ``on`` against ``off``, are printed. The CPU time is the steadier figure on a shared
machine: other processes slow the drain down, but do not add to this process's CPU time. With
metrics on, the worker serves them as ``sitq worker --metrics-port`` does (nothing scrapes them
during the drain: a scrape every few seconds is no per-task cost), and after each drain the
benchmark checks that they counted every task.

``--micro`` also times the two calls a task makes with metrics on (``started`` and
``finished``), alone, in this process, beside the same updates made on prometheus-client's own
objects (a counter, a gauge and a histogram child, each updated under its lock), which the
worker does not use. ``--rounds 0`` runs only that.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks import tasks as bench_tasks
from benchmarks.__main__ import STORES, WorkerProcess
from sitq import TaskQueue
from sitq._loop import run as run_loop

MODES = ("off", "on")


async def _drain(backend: str, mode: str, n: int) -> tuple[float, float]:
    """Tasks per second, and the worker process's CPU microseconds per task."""
    os.environ["SITQ_BENCH_WORKER_METRICS"] = mode  # read by the worker process it starts
    with tempfile.TemporaryDirectory() as scratch:
        counted = Path(scratch) / "counted"
        os.environ["SITQ_BENCH_WORKER_METRICS_OUT"] = str(counted)
        async with STORES[backend]() as url, TaskQueue(url) as queue:
            ids: list[str] = []
            for done in range(0, n, 1000):
                ids += await queue.enqueue_many([(bench_tasks.noop, ())] * min(1000, n - done))
            worker = WorkerProcess(url)
            try:
                cpu = worker.cpu_seconds()
                start = time.perf_counter()
                worker.go()
                await queue.get_result(ids[-1], timeout=600)
                while True:
                    if sum(s.succeeded for s in await queue.stats()) >= n:
                        break
                    await asyncio.sleep(0.01)
                wall = time.perf_counter() - start
                cpu = worker.cpu_seconds() - cpu
            finally:
                worker.stop()
        if mode == "on" and counted.read_text() != str(n):
            raise RuntimeError(f"the metrics counted {counted.read_text()} of {n} tasks")
    return n / wall, cpu / n * 1e6


def micro(calls: int = 200_000) -> float:
    """Microseconds for one ``started`` plus one ``finished`` call, the per-task work."""
    from sitq.observe.metrics import WorkerMetrics

    metrics = WorkerMetrics()
    started, finished = metrics.started, metrics.finished
    begin = time.perf_counter()
    for _ in range(calls):
        finished(started("default", "benchmarks.tasks.noop"), "success", 0.0004)
    loop = time.perf_counter()
    for _ in range(calls):
        pass
    end = time.perf_counter()
    return ((loop - begin) - (end - loop)) / calls * 1e6


def micro_client(calls: int = 200_000) -> float:
    """Microseconds for the same updates on prometheus-client's own objects, label children
    bound beforehand: started and running up, then running down, finished and the histogram."""
    import prometheus_client as prom

    from sitq.observe.metrics import BUCKETS

    registry = prom.CollectorRegistry()
    labels = ("default", "benchmarks.tasks.noop")
    started = prom.Counter("s", "s", ("q", "f"), registry=registry).labels(*labels)
    finished = prom.Counter("f", "f", ("q", "f", "s"), registry=registry).labels(*labels, "success")
    running = prom.Gauge("r", "r", ("q",), registry=registry).labels(labels[0])
    duration = prom.Histogram("d", "d", ("q", "f"), buckets=BUCKETS, registry=registry)
    observed = duration.labels(*labels)
    begin = time.perf_counter()
    for _ in range(calls):
        started.inc()
        running.inc()
        running.dec()
        finished.inc()
        observed.observe(0.0004)
    loop = time.perf_counter()
    for _ in range(calls):
        pass
    end = time.perf_counter()
    return ((loop - begin) - (end - loop)) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_cost", description=__doc__)
    parser.add_argument("--backend", choices=sorted(STORES), default="sqlite")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--micro", action="store_true", help="also time the calls alone")
    args = parser.parse_args()
    if args.micro:
        runs = [micro() for _ in range(5)]
        print(f"started + finished: median {statistics.median(runs):.2f} us per task")
        runs = [micro_client() for _ in range(5)]
        print(f"prometheus-client objects: median {statistics.median(runs):.2f} us per task")
    if args.rounds < 1:
        return
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            rate, cpu = run_loop(_drain(args.backend, mode, args.tasks), "asyncio")
            rates[mode].append(rate)
            cpus[mode].append(cpu)
    off_rate, off_cpu = statistics.median(rates["off"]), statistics.median(cpus["off"])
    for mode in MODES:
        rate, cpu = statistics.median(rates[mode]), statistics.median(cpus[mode])
        runs_text = ", ".join(f"{d:,.0f}" for d in rates[mode])
        cpu_text = ", ".join(f"{c:.0f}" for c in cpus[mode])
        print(
            f"{args.backend} {mode}: median {rate:,.0f} tasks/s ({runs_text}); "
            f"worker CPU median {cpu:.1f} us per task ({cpu_text})"
        )
    on_rate, on_cpu = statistics.median(rates["on"]), statistics.median(cpus["on"])
    print(
        f"{args.backend} on against off: drain rate {on_rate / off_rate - 1:+.1%}, "
        f"worker CPU {on_cpu - off_cpu:+.1f} us per task"
    )


if __name__ == "__main__":
    main()
