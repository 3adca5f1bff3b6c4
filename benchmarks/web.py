"""Do the dashboard's pages stay fast beside a million stored tasks?

    python -m benchmarks.web [--backend sqlite] [--bulk 1000000] [--empty-bulk 1000]
                             [--per-group 100] [--reps 30] [--runs 5] [--busy-seconds 6]
                             [--refresh-reps 3] [--json PATH]
    python -m benchmarks web ...            (the same)

Two stores are built as ``python -m benchmarks.listing`` builds them (``listing.filled_store``:
the isolated stores of ``python -m benchmarks``, the fast bulk filler of each backend, removed
afterwards):

* **almost empty**: ``--empty-bulk`` other tasks (1,000: mostly finished, over ten queues),
  then the measured tasks: on each of the queues ``list-a`` and ``list-b``, ``--per-group``
  tasks in each status;
* **beside N**: first ``--bulk`` other tasks (in the same shares, over the same ten queues),
  then the same measured tasks.

Both stores have the same queues, so that a page that reads each queue (a listing of every
queue, the counts) differs between them by the number of tasks only.

Each store gets its own dashboard, ``sitq web URL --port 0`` run as ``python -m sitq`` in a
subprocess (this checkout's sitq, under uvicorn as ``sitq web`` runs it, its access log going
to a file), and each page below is read over real HTTP through one keep-alive connection
(``http.client``; reopened when uvicorn has closed it after 5 s idle, which an untimed read
absorbs), timed from sending the request to the last byte of the answer:

* the overview page ``/`` and the JSON it polls, ``/api/overview`` and ``/api/queues``;
* 50-task lists: ``/tasks?limit=50`` (every status), ``/tasks?status=failed&limit=50`` and
  the same of one queue (``&queue=list-a``) as pages; ``/api/tasks?status=failed&limit=50``,
  its one-queue twin and ``/api/tasks?status=pending&limit=50`` as JSON;
* one task (a failed one of ``list-a``) as a page, ``/tasks/{id}``, and as JSON.

Per run, each page is read once untimed, then ``--reps`` times; the median of those is the
run's figure. The stores take turns run by run (almost empty, beside N, almost empty, ...), so
a busy moment of the machine tends to hit both. The table shows the median of the ``--runs``
run figures in milliseconds, and the ratio beside N / almost empty.

The counts that the overview, ``/api/overview``, ``/api/queues`` and the task lists show come
from a cache (``sitq.web._counts.Counts``): one backend ``stats()`` and ``list_workers()`` at
most every 2 s, shared by every request. The pages above mostly read the cache (a request that
finds it stale pays for the refresh; the median leaves that one out). So two more figures show
what the cache hides:

* with an overview open: for ``--busy-seconds`` (6), ``/api/tasks/{id}`` read again and again
  while a second connection polls ``/api/overview`` as the overview page does (2 s after each
  answer, so the counts are refreshed every 2 to 4 s); the median and the slowest read of the
  run (a refresh that holds up the server's event loop shows in the slowest);
* one uncached refresh, timed in this process: ``Counts`` with a TTL of 0, ``--refresh-reps``
  (3) refreshes per run, their median.

Speed is measured here and only here; the test suite asserts no timings.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.listing import MEASURED_QUEUES, PAGE, filled_store, log
from sitq import TaskQueue
from sitq.models import TaskStatus
from sitq.web._counts import Counts

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("sqlite", "postgres", "redis", "nats")
QUEUE = MEASURED_QUEUES[0]
# (label, path, tasks the answer must list); ``{id}`` is the measured task's id.
PAGES: tuple[tuple[str, str, int | None], ...] = (
    ("overview page `/`", "/", None),
    ("`/api/overview`", "/api/overview", None),
    ("`/api/queues`", "/api/queues", None),
    ("tasks page, every status", f"/tasks?limit={PAGE}", PAGE),
    ("tasks page, failed", f"/tasks?status=failed&limit={PAGE}", PAGE),
    ("tasks page, failed of one queue", f"/tasks?status=failed&queue={QUEUE}&limit={PAGE}", PAGE),
    ("`/api/tasks`, failed", f"/api/tasks?status=failed&limit={PAGE}", PAGE),
    (
        "`/api/tasks`, failed of one queue",
        f"/api/tasks?status=failed&queue={QUEUE}&limit={PAGE}",
        PAGE,
    ),
    ("`/api/tasks`, pending", f"/api/tasks?status=pending&limit={PAGE}", PAGE),
    ("task page `/tasks/{id}`", "/tasks/{id}", None),
    ("`/api/tasks/{id}`", "/api/tasks/{id}", None),
)
BUSY_PAGE = "`/api/tasks/{id}`"
BUSY_MEDIAN = "`/api/tasks/{id}` with an overview open: median"
BUSY_SLOWEST = "`/api/tasks/{id}` with an overview open: slowest"
POLL_INTERVAL = 2.0
REFRESH = "count refresh, uncached (`stats()` + `list_workers()`)"
LISTENING = re.compile(r"at http://127\.0\.0\.1:(\d+)/")


class Client:
    """One keep-alive HTTP connection to the dashboard on 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def get(self, path: str) -> bytes:
        """The body of ``GET path``; anything but 200 is an error. A connection the server
        closed (uvicorn closes one idle for 5 s) is opened again, once."""
        try:
            self.conn.request("GET", path)
            response = self.conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            self.conn.close()
            self.conn.request("GET", path)
            response = self.conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:300]!r}")
        return body

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class Server:
    """``sitq web URL --port 0`` in a subprocess, and a keep-alive connection to it."""

    def __init__(self, url: str, startup: float = 60.0) -> None:
        # The server runs this checkout's sitq (src/), not whichever one is installed.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix="sitq-web-bench-", suffix=".log"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sitq", "web", url, "--port", "0"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
        try:
            self.port = self._wait_for_port(startup)
        except BaseException:
            self.stop()
            raise
        self.client = Client(self.port)

    def _wait_for_port(self, startup: float) -> int:
        deadline = time.monotonic() + startup
        while time.monotonic() < deadline:
            found = LISTENING.search(Path(self._log.name).read_text())
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        output = Path(self._log.name).read_text()
        raise RuntimeError(f"sitq web did not start (exit {self.proc.poll()}):\n{output}")

    def get(self, path: str) -> bytes:
        """The body of ``GET path`` on the benchmark's connection."""
        return self.client.get(path)

    def stop(self) -> None:
        """Close the connection and stop the server (SIGTERM; killed if it lingers)."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def listed(path: str, body: bytes) -> int:
    """How many tasks the answer to ``path`` lists."""
    if path.startswith("/api/"):
        return len(json.loads(body)["tasks"])
    return body.count(b"<tr data-task-id=")


def check(server: Server, paths: dict[str, str]) -> None:
    """Every page answers 200, and each list lists a full page."""
    for label, _, want in PAGES:
        body = server.get(paths[label])
        if want is not None and listed(paths[label], body) != want:
            got = listed(paths[label], body)
            raise RuntimeError(f"{paths[label]} lists {got} tasks, not {want}")


def time_pages(server: Server, paths: dict[str, str], reps: int) -> dict[str, float]:
    """One run: per page, one untimed read, then the median of ``reps`` timed reads (ms)."""
    figures = {}
    for label, _, _ in PAGES:
        path = paths[label]
        server.get(path)
        samples = []
        for _ in range(reps):
            start = time.perf_counter_ns()
            server.get(path)
            samples.append((time.perf_counter_ns() - start) / 1e6)
        figures[label] = statistics.median(samples)
    return figures


def time_beside_overview(server: Server, path: str, seconds: float) -> dict[str, float]:
    """``path`` read again and again for ``seconds`` while a second connection polls
    ``/api/overview`` as an open overview page does (the next poll 2 s after each answer):
    the median and the slowest read (ms)."""
    stop = threading.Event()
    failed: list[BaseException] = []

    def poll() -> None:
        client = Client(server.port)
        try:
            while not stop.is_set():
                client.get("/api/overview")
                stop.wait(POLL_INTERVAL)
        except BaseException as exc:  # reported by the reader below
            failed.append(exc)
        finally:
            client.close()

    poller = threading.Thread(target=poll, name="overview-poller")
    poller.start()
    samples = []
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not failed:
            start = time.perf_counter_ns()
            server.get(path)
            samples.append((time.perf_counter_ns() - start) / 1e6)
    finally:
        stop.set()
        poller.join()
    if failed:
        raise RuntimeError(f"the overview poller failed: {failed[0]!r}")
    return {BUSY_MEDIAN: statistics.median(samples), BUSY_SLOWEST: max(samples)}


async def time_refresh(queue: TaskQueue, reps: int) -> float:
    """Median milliseconds of ``reps`` uncached count refreshes (what the cache makes every
    2 s: ``stats()`` and ``list_workers()``)."""
    counts = Counts(queue, ttl=0)
    samples = []
    for _ in range(reps):
        start = time.perf_counter_ns()
        await counts.get()
        samples.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(samples)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build both stores, serve each, time every page run by run, stores taking turns."""
    names = ("almost_empty", "beside_bulk")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    async with AsyncExitStack() as stack:
        queues: dict[str, TaskQueue] = {}
        servers: dict[str, Server] = {}
        paths: dict[str, dict[str, str]] = {}
        for name, bulk in zip(names, (args.empty_bulk, args.bulk), strict=True):
            url, queue = await stack.enter_async_context(
                filled_store(args.backend, bulk, args.per_group)
            )
            queues[name] = queue
            page = await queue.list_tasks(TaskStatus.FAILED, QUEUE, limit=1)
            task_id = page.tasks[0].task_id
            paths[name] = {label: path.replace("{id}", task_id) for label, path, _ in PAGES}
            server = Server(url)
            stack.callback(server.stop)
            servers[name] = server
            await asyncio.to_thread(check, server, paths[name])
        for run_no in range(args.runs):
            for name in names:
                figures = await asyncio.to_thread(time_pages, servers[name], paths[name], args.reps)
                figures |= await asyncio.to_thread(
                    time_beside_overview, servers[name], paths[name][BUSY_PAGE], args.busy_seconds
                )
                figures[REFRESH] = await time_refresh(queues[name], args.refresh_reps)
                runs[name].append(figures)
            log(f"  run {run_no + 1}/{args.runs} done")
    return runs


def medians(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    """The median over the runs of each figure."""
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def table(empty: dict[str, float], big: dict[str, float], bulk: int, empty_bulk: int) -> str:
    """The figures as a markdown table."""
    lines = [
        f"| request (ms, median) | almost empty ({empty_bulk:,}) | beside {bulk:,} | ratio |",
        "|---|---:|---:|---:|",
    ]
    for key in empty:
        ratio = big[key] / empty[key]
        lines.append(f"| {key} | {empty[key]:,.2f} | {big[key]:,.2f} | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, prog: str = "python -m benchmarks.web") -> None:
    """Parse the arguments, run, print the table and write the figures as JSON."""
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="sqlite", choices=BACKENDS)
    parser.add_argument("--bulk", type=int, default=1_000_000, help="tasks stored beside")
    parser.add_argument(
        "--empty-bulk",
        type=int,
        default=1000,
        help="tasks stored beside on the almost empty store (so that it has the same queues)",
    )
    parser.add_argument(
        "--per-group", type=int, default=100, help="measured tasks per status and queue"
    )
    parser.add_argument("--reps", type=int, default=30, help="timed requests per page and run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--busy-seconds",
        type=float,
        default=6.0,
        help="seconds of reading a task beside a polling overview, per store and run",
    )
    parser.add_argument(
        "--refresh-reps", type=int, default=3, help="uncached count refreshes per store and run"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "web.json")
    args = parser.parse_args(argv)
    for name in ("bulk", "reps", "runs", "refresh_reps", "busy_seconds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.empty_bulk < args.bulk:
        parser.error("--empty-bulk must be from 0 to less than --bulk")
    if args.per_group < PAGE:
        parser.error(f"--per-group must be at least {PAGE}, for full pages of one queue")

    started = time.perf_counter()
    runs = asyncio.run(run(args))
    empty, big = medians(runs["almost_empty"]), medians(runs["beside_bulk"])
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"{prog} " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "params": vars(args) | {"json": str(args.json), "page": PAGE},
        "seconds": round(time.perf_counter() - started, 1),
        "medians": {"almost_empty": empty, "beside_bulk": big},
        "runs": runs,
    }
    print(
        f"\n{report['date']}, {args.backend}, medians of {args.runs} runs x {args.reps} requests\n"
    )
    print(table(empty, big, args.bulk, args.empty_bulk))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nfigures: {args.json}")


if __name__ == "__main__":
    main()
