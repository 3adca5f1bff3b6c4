"""What a log line per task costs: the drain of ``python -m benchmarks`` with the worker
logging nothing, text lines and JSON lines, taking turns.

    python -m benchmarks.log_cost [--backend sqlite] [--rounds 5] [--tasks 10000]

Each round drains a fresh store three times (off, text, json), so that the machine's drift
touches the three alike. Printed per mode: the median drain (tasks per second) and the
worker process's median CPU time per task, each with its cost against ``off``. The drain
follows whatever else the machine runs; the worker's CPU per task much less so, and the
drain of a worker that is busy all the time falls by the same fraction its CPU per task
grows. The worker writes its lines to a file, as a deployment's would.
"""

from __future__ import annotations

import argparse
import os
import statistics

from benchmarks.__main__ import STORES, bench_drain
from sitq._loop import run as run_loop

MODES = ("off", "text", "json")


async def _drain(backend: str, mode: str, tasks: int, cpu: list[float]) -> float:
    os.environ["SITQ_BENCH_WORKER_LOG"] = mode  # read by the worker process it starts
    async with STORES[backend]() as url:
        return await bench_drain(url, tasks, cpu=cpu)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.log_cost", description=__doc__)
    parser.add_argument("--backend", choices=sorted(STORES), default="sqlite")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    drains: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpus: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            cpu: list[float] = []
            drains[mode].append(run_loop(_drain(args.backend, mode, args.tasks, cpu), "asyncio"))
            cpus[mode].append(cpu[0] / args.tasks * 1e6)
    off = statistics.median(drains["off"])
    off_cpu = statistics.median(cpus["off"])
    for mode in MODES:
        median = statistics.median(drains[mode])
        per_task = statistics.median(cpus[mode])
        runs = ", ".join(f"{d:,.0f}" for d in drains[mode])
        line = f"{args.backend} {mode}: drain median {median:,.0f} tasks/s ({runs})"
        line += f"; worker CPU {per_task:.1f} us/task"
        if mode != "off":
            line += f"; drain {1 - median / off:.1%} below off, CPU +{per_task / off_cpu - 1:.1%}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
