"""Run sitq and its peers on the same workloads; write markdown tables of medians and ratios.

    .venv-bench/bin/python -m benchmarks.peers.run [--backend redis] [--peer arq] [--runs 3]
        [--tasks 2000] [--enqueue-tasks 5000] [--sleep-tasks 500] [--processes 4]
        [--latency-samples 100] [--latency-seconds 3] [--no-sitq] [--no-kinds]
        [--sitq-loop asyncio] [--json F] [--markdown F]

``scripts/bench`` makes the virtualenv, installs everything, starts the services and runs this
with its defaults, which finish every backend, peer and workload in about 15 minutes on a
2-core machine. Workloads, each on a fresh store, medians over ``--runs`` runs (see
``_common.py`` for the rules every peer follows):

* enqueue (one at a time): ``--enqueue-tasks`` calls of the peer's enqueue, one client.
* enqueue_many: ``--tasks`` tasks with the peer's many-tasks API, batches of 1,000.
* drain: ``--tasks`` no-op tasks already queued (fewer for a peer with ``max_drain_tasks``),
  one worker process (concurrency 10), from ``go`` until every task is done.
* drain, ``--processes`` (4) worker processes: the same, four worker processes on one store.
* drain of tasks that wait 10 ms: ``--sleep-tasks`` tasks, one worker process, concurrency 10
  (``await asyncio.sleep(0.01)``; ``time.sleep(0.01)`` in a thread where the peer runs only
  sync tasks).
* latency: enqueue-to-result with an idle worker process, one task at a time, up to
  ``--latency-samples`` samples or ``--latency-seconds``; then the idle worker's CPU.

sitq runs once per worker kind: ``sitq`` (AsyncWorker, the column the ratios use),
``sitq-thread`` and ``sitq-process`` (drain and latency only: enqueueing does not depend on the
worker kind). A peer that fails a workload gets no figure for it; the error is listed under
its backend's tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.peers import BASELINE_CLASSES, KIND_CLASSES, PEER_CLASSES, _common, load

# (label, key, format, higher is better: True / False, or None for no ratio)
ROWS: list[tuple[str, str, str, bool | None]] = [
    ("enqueue, one at a time (tasks/s)", "enqueue_per_s", "{:,.0f}", True),
    ("enqueue_many, batches of 1,000 (tasks/s)", "enqueue_many_per_s", "{:,.0f}", True),
    ("drain, 1 worker process, no-op (tasks/s)", "drain_per_s", "{:,.0f}", True),
    ("drain, {p} worker processes, no-op (tasks/s)", "drain_multi_per_s", "{:,.0f}", True),
    ("drain, 1 worker process, sleep 10 ms (tasks/s)", "drain_sleep_per_s", "{:,.0f}", True),
    ("enqueue-to-result p50 (ms)", "latency_p50_ms", "{:.2f}", False),
    ("enqueue-to-result p95 (ms)", "latency_p95_ms", "{:.2f}", False),
    ("enqueue-to-result p99 (ms)", "latency_p99_ms", "{:.2f}", False),
    ("idle worker CPU (fraction of a core)", "latency_idle_cpu_fraction", "{:.4f}", None),
    ("no-op tasks drained / sleep tasks drained", "drain_tasks", "{}", None),
    ("latency samples", "latency_samples", "{:.0f}", None),
    ("wall time of this column (s)", "seconds", "{:.0f}", None),
]
RATIO_KEYS = [key for _, key, _, better in ROWS if better is not None]


async def run_peer(spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every workload of one peer, ``args.runs`` times; the medians, runs, notes and errors."""
    collected: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}  # seconds per workload and run, store set-up included
    errors: list[str] = []
    started = time.perf_counter()
    try:
        peer = load(spec)()
    except Exception as exc:
        return {"name": spec, "notes": "", "errors": [f"import: {exc!r}"], "median": {}}
    # A peer may cap its drains (RQ forks a process per job: 2,000 would take a minute).
    cap = getattr(peer, "max_drain_tasks", None) or args.tasks
    drain_tasks, sleep_tasks = min(args.tasks, cap), min(args.sleep_tasks, cap)
    skip: frozenset[str] = getattr(peer, "skip", frozenset())
    workloads: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("enqueue_per_s", lambda: peer.enqueue_one(args.enqueue_tasks)),
        ("enqueue_many_per_s", lambda: peer.enqueue_many(args.tasks)),
        ("drain_per_s", lambda: peer.drain(drain_tasks)),
        ("drain_multi_per_s", lambda: peer.drain(drain_tasks, processes=args.processes)),
        ("drain_sleep_per_s", lambda: peer.drain(sleep_tasks, task="sleep")),
        ("latency", lambda: peer.latency(args.latency_samples)),
    ]
    for run in range(args.runs):
        for key, call in workloads:
            if key in skip:
                continue
            began = time.perf_counter()
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
            wall.setdefault(key, []).append(round(time.perf_counter() - began, 2))
        print(
            f"  {peer.backend}/{peer.name}: run {run + 1}/{args.runs} done "
            f"({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    median: dict[str, Any] = {key: statistics.median(v) for key, v in collected.items()}
    median["seconds"] = time.perf_counter() - started
    median["drain_tasks"] = f"{drain_tasks:,} / {sleep_tasks:,}"
    return {
        "name": peer.name,
        "notes": peer.notes,
        "errors": errors,
        "runs": collected,
        "median": median,
        "workload_seconds": wall,
    }


def label(text: str, processes: int) -> str:
    return text.replace("{p}", str(processes))


def table(results: list[dict[str, Any]], processes: int) -> str:
    """Medians: a row per workload, a column per queue."""
    names = [r["name"] for r in results]
    lines = ["| workload | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for text, key, fmt, _ in ROWS:
        cells = [fmt.format(r["median"][key]) if key in r["median"] else "n/a" for r in results]
        lines.append(f"| {label(text, processes)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio(
    base: dict[str, Any], peer: dict[str, Any], key: str, higher_better: bool
) -> float | None:
    """How many times better sitq is: throughput sitq/peer, latency peer/sitq."""
    mine, theirs = base["median"].get(key), peer["median"].get(key)
    if not mine or not theirs:
        return None
    return float(mine / theirs if higher_better else theirs / mine)


def best_peer(
    base: dict[str, Any], peers: list[dict[str, Any]], key: str, higher_better: bool
) -> tuple[dict[str, Any], float] | None:
    """The peer with the best figure for ``key`` and sitq's ratio to it (lowest ratio)."""
    scored = [(p, r) for p in peers if (r := ratio(base, p, key, higher_better)) is not None]
    return min(scored, key=lambda pr: pr[1]) if scored else None


def ratios(base: dict[str, Any], peers: list[dict[str, Any]], processes: int) -> str:
    """sitq (AsyncWorker) against every peer and against the best peer of each workload."""
    names = [p["name"] for p in peers]
    lines = [
        "| sitq is N times better | " + " | ".join(names) + " | **vs best peer** |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for text, key, _, higher_better in ROWS:
        if higher_better is None:
            continue
        cells = []
        for p in peers:
            r = ratio(base, p, key, higher_better)
            cells.append("n/a" if r is None else f"{r:.2f}x")
        best = best_peer(base, peers, key, higher_better)
        cells.append("n/a" if best is None else f"**{best[1]:.2f}x** ({best[0]['name']})")
        lines.append(f"| {label(text, processes)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(report: dict[str, Any], processes: int) -> str:
    """sitq vs the best peer: a row per workload, a column per backend."""
    backends = [b for b, rs in report["results"].items() if rs and rs[0]["name"] == "sitq"]
    if not backends:
        return ""
    lines = [
        "| sitq vs best peer | " + " | ".join(backends) + " |",
        "|---|" + "---:|" * len(backends),
    ]
    for text, key, _, higher_better in ROWS:
        if higher_better is None:
            continue
        cells = []
        for backend in backends:
            base, *rest = report["results"][backend]
            peers = [r for r in rest if not r["name"].startswith("sitq")]
            best = best_peer(base, peers, key, higher_better)
            cells.append("n/a" if best is None else f"{best[1]:.2f}x ({best[0]['name']})")
        lines.append(f"| {label(text, processes)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    """The whole report: what was run where, the headline, then per backend the medians, the
    ratios and each column's notes and errors."""
    m = report["machine"]
    p = args.processes
    out = [
        f"## sitq and its peers: {report['date'][:10]}",
        "",
        f"- Date: {report['date']}; wall time of the whole run: {report['seconds']:.0f} s",
        f"- Command: `{report['invoked_as'] or report['command']}`"
        + (f" (which runs `{report['command']}`)" if report["invoked_as"] else ""),
        f"- Machine: {m['cpus']} cores ({m['cpu']}), {m['platform']}, Python {m['python']}",
        f"- Medians of {args.runs} run{'s' if args.runs != 1 else ''}, each workload on a "
        f"fresh store; {args.enqueue_tasks:,} single enqueues, {args.tasks:,} tasks for "
        f"enqueue_many and the no-op drains, {args.sleep_tasks:,} sleep tasks, up to "
        f"{args.latency_samples} latency samples or {args.latency_seconds:g} s",
        f"- Event loop: sitq's worker on {args.sitq_loop} (`--sitq-loop`); every peer on the "
        "loop its own worker command uses in this virtualenv, where uvloop is installed: the "
        "taskiq and PgQueuer workers on uvloop (their commands pick it when installed), arq, "
        "SAQ, procrastinate, Dramatiq and RQ on asyncio, Huey and Celery on threads; "
        "every client (enqueue, result waiting) on asyncio",
        "- Workers: one process with concurrency 10 where the peer has that setting (sitq "
        f"`AsyncWorker` unless the column says -thread or -process); {p} such processes for "
        f"the {p}-process drain; drains timed from `go` until every task is done",
        "- sitq is N times better: throughput sitq/peer, latency peer/sitq; the sitq column "
        "(AsyncWorker) is the one compared; n/a where either side has no figure",
    ]
    head = headline(report, p)
    if head:
        out += ["", "### sitq vs the best peer of each backend", "", head]
    for backend, results in report["results"].items():
        out += ["", f"### {backend}", "", table(results, p)]
        peers = [r for r in results if not r["name"].startswith("sitq")]
        if results and results[0]["name"] == "sitq" and peers:
            out += ["", ratios(results[0], peers, p)]
        out.append("")
        out += [f"- **{r['name']}**: {r['notes']}" for r in results if r["notes"]]
        out += [f"- **{r['name']}** error: {e}" for r in results for e in r["errors"]]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backend", action="append", choices=list(PEER_CLASSES))
    parser.add_argument("--peer", action="append", help="only these peers (by name), e.g. arq")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--enqueue-tasks", type=int, default=5000)
    parser.add_argument("--sleep-tasks", type=int, default=500)
    parser.add_argument("--processes", type=int, default=4, help="for the multi-process drain")
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--latency-seconds", type=float, default=3.0)
    parser.add_argument("--no-sitq", action="store_true", help="leave out the sitq columns")
    parser.add_argument("--no-kinds", action="store_true", help="leave out sitq-thread/process")
    parser.add_argument("--sitq-loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--json", type=Path, help="also write the figures there as JSON")
    parser.add_argument("--markdown", type=Path, help="also write the report there")
    args = parser.parse_args()
    _common.LATENCY_SECONDS = args.latency_seconds
    from benchmarks.peers import sitq_peer

    sitq_peer.LOOP = args.sitq_loop
    started = time.perf_counter()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", "benchmarks.peers.run", *sys.argv[1:]]),
        # What the user typed, when a wrapper ran this (scripts/bench sets it).
        "invoked_as": os.environ.get("SITQ_BENCH_COMMAND", "").strip(),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "results": {},
    }
    for backend in args.backend or list(PEER_CLASSES):
        specs = [
            s for s in PEER_CLASSES[backend] if not args.peer or s.split("_peer")[0] in args.peer
        ]
        if not args.no_sitq:
            kinds = [] if args.no_kinds else KIND_CLASSES[backend]
            specs = [BASELINE_CLASSES[backend], *kinds, *specs]
        report["results"][backend] = [asyncio.run(run_peer(s, args)) for s in specs]
    report["seconds"] = time.perf_counter() - started
    text = markdown(report, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
