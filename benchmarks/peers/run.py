"""Run sitq and its peers on the same workloads; print markdown tables of medians and ratios.

    .venv-bench/bin/python -m benchmarks.peers.run [--backend redis] [--peer arq] [--runs 3]
        [--tasks 20000] [--enqueue-tasks 5000] [--latency-samples 300] [--no-sitq] [--json F]

Workloads, each on a fresh store, medians over ``--runs`` runs (see ``_common.py`` for the
rules every peer follows):

* enqueue (one at a time): ``--enqueue-tasks`` calls of the peer's enqueue, one client.
* enqueue_many: ``--tasks`` tasks with the peer's many-tasks API, batches of 1,000.
* drain: ``--tasks`` tasks already queued (fewer for a peer with ``max_drain_tasks``), one
  worker process (concurrency 10), from ``go`` until every result is stored.
* latency: enqueue-to-result with an idle worker process, one task at a time, up to
  ``--latency-samples`` samples or ``--latency-seconds``; then the idle worker's CPU.

A peer that fails a workload gets no figure for it; the error is listed under the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.peers import BASELINE_CLASSES, PEER_CLASSES, _common, load

ROWS = [
    ("enqueue, one at a time (tasks/s)", "enqueue_per_s", "{:,.0f}", True),
    ("enqueue_many, batches of 1,000 (tasks/s)", "enqueue_many_per_s", "{:,.0f}", True),
    ("drain, 1 worker process, no-op (tasks/s)", "drain_per_s", "{:,.0f}", True),
    ("drain: tasks drained", "drain_tasks", "{:,.0f}", None),
    ("enqueue-to-result p50 (ms)", "latency_p50_ms", "{:.2f}", False),
    ("enqueue-to-result p95 (ms)", "latency_p95_ms", "{:.2f}", False),
    ("enqueue-to-result p99 (ms)", "latency_p99_ms", "{:.2f}", False),
    ("latency samples", "latency_samples", "{:.0f}", None),
    ("idle worker CPU (fraction of a core)", "latency_idle_cpu_fraction", "{:.4f}", None),
    ("wall time of this peer (s)", "seconds", "{:.0f}", None),
]


async def run_peer(
    spec: str, runs: int, tasks: int, enqueue_tasks: int, latency_samples: int
) -> dict[str, Any]:
    collected: dict[str, list[float]] = {}
    errors: list[str] = []
    started = time.perf_counter()
    try:
        peer = load(spec)()
    except Exception as exc:
        return {"name": spec, "notes": "", "errors": [f"import: {exc!r}"], "median": {}}
    # A peer may cap its drain (RQ forks a process per job: 20,000 would take minutes).
    drain_tasks = min(tasks, getattr(peer, "max_drain_tasks", None) or tasks)
    workloads: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("enqueue_per_s", lambda: peer.enqueue_one(enqueue_tasks)),
        ("enqueue_many_per_s", lambda: peer.enqueue_many(tasks)),
        ("drain_per_s", lambda: peer.drain(drain_tasks)),
        ("latency", lambda: peer.latency(latency_samples)),
    ]
    for run in range(runs):
        for key, call in workloads:
            try:
                value = await call()
            except Exception as exc:
                errors.append(f"run {run + 1}, {key}: {type(exc).__name__}: {exc}"[:2000])
                traceback.print_exc(file=sys.stderr)
                continue
            if isinstance(value, dict):
                for name, figure in value.items():
                    collected.setdefault(f"latency_{name}", []).append(figure)
            elif value is not None:
                collected.setdefault(key, []).append(value)
        print(
            f"  {peer.backend}/{peer.name}: run {run + 1}/{runs} done "
            f"({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    median = {key: statistics.median(values) for key, values in collected.items()}
    median["seconds"] = time.perf_counter() - started
    median["drain_tasks"] = drain_tasks
    return {
        "name": peer.name,
        "notes": peer.notes,
        "errors": errors,
        "runs": collected,
        "median": median,
    }


def table(results: list[dict[str, Any]]) -> str:
    names = [r["name"] for r in results]
    lines = ["| workload | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, key, fmt, _ in ROWS:
        cells = [fmt.format(r["median"][key]) if key in r["median"] else "n/a" for r in results]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratios(base: dict[str, Any], peers: list[dict[str, Any]]) -> str:
    """How many times better sitq is: throughput sitq/peer, latency peer/sitq."""
    lines = [
        "| sitq is N times better | " + " | ".join(p["name"] for p in peers) + " |",
        "|---|" + "---:|" * len(peers),
    ]
    for label, key, _, higher_better in ROWS:
        if higher_better is None:
            continue
        cells = []
        for p in peers:
            mine, theirs = base["median"].get(key), p["median"].get(key)
            if not mine or not theirs:
                cells.append("n/a")
            else:
                cells.append(f"{(mine / theirs) if higher_better else (theirs / mine):.2f}x")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", action="append", choices=list(PEER_CLASSES))
    parser.add_argument("--peer", action="append", help="only these peers (by name), e.g. arq")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--enqueue-tasks", type=int, default=None, help="default: min(tasks, 5000)")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--latency-seconds", type=float, default=_common.LATENCY_SECONDS)
    parser.add_argument("--no-sitq", action="store_true", help="leave out the sitq column")
    parser.add_argument("--json", type=Path, help="also write the figures there as JSON")
    args = parser.parse_args()
    _common.LATENCY_SECONDS = args.latency_seconds
    enqueue_tasks = args.enqueue_tasks or min(args.tasks, 5000)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.peers.run " + " ".join(sys.argv[1:]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "results": {},
    }
    out: list[str] = []
    for backend in args.backend or list(PEER_CLASSES):
        specs = [
            s for s in PEER_CLASSES[backend] if not args.peer or s.split("_peer")[0] in args.peer
        ]
        if not args.no_sitq:
            specs.insert(0, BASELINE_CLASSES[backend])
        results = [
            asyncio.run(run_peer(s, args.runs, args.tasks, enqueue_tasks, args.latency_samples))
            for s in specs
        ]
        report["results"][backend] = results
        out += [f"\n### {backend}\n", table(results)]
        if not args.no_sitq and len(results) > 1:
            out += ["", ratios(results[0], results[1:])]
        out.append("")
        out += [f"- **{r['name']}**: {r['notes']}" for r in results if r["notes"]]
        out += [f"- **{r['name']}** error: {e}" for r in results for e in r["errors"]]
    report["seconds"] = time.perf_counter() - started
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    print(
        f"\n{report['date']}, {report['command']}, medians of {args.runs} runs, "
        f"{report['seconds']:.0f} s in all"
    )
    print("\n".join(out))
    if args.json:
        print(f"\nfigures: {args.json}")


if __name__ == "__main__":
    main()
