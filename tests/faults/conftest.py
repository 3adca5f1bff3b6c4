"""What every fault case shares: a drain of tasks that log each execution, the check that each
task ends with exactly one final result, and the figures each case reports.

Each case adds one line of figures to a section "sitq fault injection" at the end of pytest's
output, so that they show in CI logs without ``-s`` (with ``-s`` each line also prints as its case
ends): tasks enqueued, executions (from the tasks' own log), results, outcomes refused by fencing
(a worker's outcome for a task that another worker took over and ran again), retried outcomes
found already recorded (the first write was applied but its reply was lost with the connection,
so the retry is refused too; the task ran once), and leases that heartbeats found lost.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sitq import BackendError, TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conformance.processes import process_tree
from tests.conftest import (
    FACTORIES,
    SHARED,
    BackendFactory,
    WorkerProcesses,
    wait_until,
    with_query,
)
from tests.servers import OwnServer, own_server

#: The lease of every worker in the suite: short, so that lost tasks come back quickly.
LEASE = 2.0
#: The worker log line of an outcome that the backend refused (a fencing token no longer current).
REFUSED = "outcome refused: its claim is no longer current"
_REFUSED_ID = re.compile(r"task (\S+) \S+ " + re.escape(REFUSED))
#: The worker log line of a lease that its heartbeat found taken over.
LOST = "lost its lease"


def refused_line(task_id: str) -> re.Pattern[str]:
    """The worker's line for ``task_id``'s outcome refused (``task <id> <function> ...``)."""
    return re.compile(rf"task {re.escape(task_id)} \S+ {re.escape(REFUSED)}")


def lost_line(task_id: str) -> re.Pattern[str]:
    """The worker's line for ``task_id``'s lease found lost by its heartbeat."""
    return re.compile(rf"task {re.escape(task_id)} \S+ {re.escape(LOST)}")


#: The worker log line once it has connected and begun claiming.
STARTED = " started on "

SERVER_BACKENDS = [name for name in SHARED if name != "sqlite"]

_FIGURES = pytest.StashKey[list[str]]()


def fault_url(url: str) -> str:
    """The backend URL for a fault case. On NATS, the consumers' ack wait equals the lease, so
    that a worker killed with fetched but unclaimed messages delays them by one lease."""
    return with_query(url, ack_wait=str(LEASE)) if url.startswith("nats:") else url


@dataclass
class Figures:
    """What one case did."""

    case: str
    backend: str
    enqueued: int
    executions: int
    results: int
    refused: int
    recorded_retries: int
    lost: int
    seconds: float
    note: str = ""

    def line(self) -> str:
        text = (
            f"{self.case} [{self.backend}]: {self.enqueued} tasks enqueued, "
            f"{self.executions} executions ({self.executions - self.enqueued} repeated), "
            f"{self.results} results, {self.refused} outcomes refused by fencing, "
            f"{self.recorded_retries} retried outcomes found already recorded, "
            f"{self.lost} leases found lost, {self.seconds:.1f} s"
        )
        return f"{text}; {self.note}" if self.note else text


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[Figures], None]:
    """Records a case's figures for the summary at the end of the run (and prints them)."""

    def add(figures: Figures) -> None:
        line = figures.line()
        print(f"\n{line}")
        request.config.stash.setdefault(_FIGURES, []).append(line)

    return add


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.section("sitq fault injection")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(params=SERVER_BACKENDS)
def server_backends(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    """Every shared backend with a server to connect to (all but SQLite)."""
    return FACTORIES[request.param](tmp_path, request)


@pytest.fixture
async def started_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[OwnServer]:
    """A server of the test's own (``request.param``: redis, nats or postgres), always stopped."""
    server = own_server(request.param, tmp_path / "server")
    try:
        await server.start()
        yield server
    finally:
        server.stop()


def worker_notices(workers: WorkerProcesses) -> tuple[list[str], int]:
    """The ids of the tasks whose outcomes were refused, and how many leases were found lost,
    from every worker's log."""
    logs = [workers.output(proc) for proc in workers.procs]
    refused = [task_id for log in logs for task_id in _REFUSED_ID.findall(log)]
    return refused, sum(log.count(LOST) for log in logs)


class Drain:
    """``total`` tasks, each appending one line per execution to a log (``tasks.record_item``)."""

    def __init__(self, queue: TaskQueue, log_dir: Path, total: int, label: str = "drain") -> None:
        self.queue = queue
        self.log_dir = log_dir
        self.total = total
        self.label = label
        self.ids: list[str] = []
        self.started = time.monotonic()

    async def enqueue(self) -> None:
        calls: list[Any] = [
            (tasks.record_item, (str(self.log_dir), self.label, i)) for i in range(self.total)
        ]
        for start in range(0, self.total, 1000):
            self.ids += await self.queue.enqueue_many(calls[start : start + 1000])

    def executions(self) -> Counter[int]:
        """Executions per task, from the log (one line per execution)."""
        path = self.log_dir / f"{self.label}.log"
        if not path.exists():
            return Counter()
        return Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)

    def runs_by_pid(self) -> Counter[int]:
        """Executions per process, from the log."""
        path = self.log_dir / f"{self.label}.log"
        if not path.exists():
            return Counter()
        return Counter(int(line.split()[1]) for line in path.read_text().splitlines() if line)

    def check_every_worker_ran(self, procs: list[subprocess.Popen[bytes]]) -> None:
        """Every one of these workers that is still running ran tasks (a process worker in its
        pool's processes): each kind of worker took part in the drain."""
        runs = self.runs_by_pid()
        for proc in procs:
            if proc.poll() is None:
                kind = proc.args[proc.args.index("--kind") + 1]  # type: ignore[union-attr]
                ran = sum(runs[pid] for pid in process_tree(proc.pid))
                assert ran > 0, f"the {kind} worker {proc.pid} ran no task"

    def executed(self) -> int:
        """How many distinct tasks have run at least once."""
        return len(self.executions())

    async def wait_executed(self, count: int, timeout: float = 60) -> None:
        await wait_until(
            lambda: self.executed() >= count,
            timeout=timeout,
            interval=0.05,
            message=f"{count} of {self.total} tasks to run",
        )

    async def run(
        self,
        workers: WorkerProcesses,
        procs: list[subprocess.Popen[bytes]],
        fault: Callable[[], Awaitable[object]],
        at: float = 0.25,
        timeout: float = 120,
    ) -> int:
        """Enqueue the tasks once the workers have started, inject the fault once a fraction
        ``at`` of them has run, and drain the rest within ``timeout`` seconds. Then check that
        every task has exactly one final result, stop the workers gracefully (late outcomes are
        handed in, and refused) and check again. Returns the number of results."""
        await wait_started(workers, procs)
        await self.enqueue()
        await self.wait_executed(int(self.total * at))
        await fault()
        await self.wait_executed(self.total, timeout=timeout)
        results = await self.check_results()
        self.check_every_worker_ran(procs)
        await stop_workers(workers)
        await self.check_stats()
        return results

    async def check_results(self, timeout: float = 90) -> int:
        """Wait for every task's result; assert each is the one final success it should be and
        that the queue holds exactly ``total`` results and nothing else. Returns the number of
        results."""
        deadline = time.monotonic() + timeout
        results = []
        for start in range(0, len(self.ids), 200):
            chunk = self.ids[start : start + 200]
            results += await asyncio.gather(*(self._result(i, deadline) for i in chunk))
        for item, result in enumerate(results):
            assert result.status == TaskStatus.SUCCESS, (item, result.error)
            assert self.queue.serializer.loads(result.value) == item
            assert result.attempts >= 1
        runs = self.executions()
        assert set(runs) == set(range(self.total)), "every task ran"
        await self.check_stats()
        return len(results)

    async def check_stats(self) -> None:
        """The queue holds exactly one successful result per task, and nothing else."""
        stats = {s.queue: s for s in await self.queue.stats()}["default"]
        assert (stats.succeeded, stats.failed, stats.cancelled) == (self.total, 0, 0)
        assert (stats.pending, stats.scheduled, stats.running) == (0, 0, 0)

    async def _result(self, task_id: str, deadline: float) -> Any:
        """The task's final result, waited for (push-based); a client that is reconnecting
        (after a server restart) is asked again."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no result for task {task_id}")
            try:
                result = await self.queue.get_result(task_id, timeout=min(left, 10))
            except BackendError:
                await asyncio.sleep(0.1)
                continue
            if result is not None:
                return result

    def figures(
        self,
        case: str,
        backend: str,
        workers: WorkerProcesses,
        results: int,
        note: str = "",
        others: dict[str, int] | None = None,
    ) -> Figures:
        """The case's figures; ``others`` maps the ids of tasks outside the drain to their
        executions."""
        runs = {task_id: n for task_id, n in zip(self.ids, self._runs(), strict=True)}
        runs.update(others or {})
        refused, lost = worker_notices(workers)
        # A refused outcome of a task that ran once was the retry of a write already applied.
        recorded = sum(1 for task_id in refused if runs[task_id] == 1)
        return Figures(
            case=case,
            backend=backend,
            enqueued=len(runs),
            executions=sum(runs.values()),
            results=results,
            refused=len(refused) - recorded,
            recorded_retries=recorded,
            lost=lost,
            seconds=time.monotonic() - self.started,
            note=note,
        )

    def _runs(self) -> list[int]:
        executions = self.executions()
        return [executions[i] for i in range(self.total)]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "log"
    path.mkdir()
    return path


#: The kinds of the workers of a drain, in the order they are started: every kind faces every
#: fault (two async workers: the kind most users run).
FLEET = ("async", "thread", "process", "async")


def start_worker(
    workers: WorkerProcesses,
    url: str,
    *,
    kind: str = "async",
    concurrency: int = 8,
    queues: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """A ``sitq worker`` process of ``kind`` with the suite's lease, logging when it has started.
    A process worker gets half the concurrency: each of its slots is a process of its own."""
    if kind == "process":
        concurrency = max(concurrency // 2, 1)
    return workers.start(
        url,
        kind=kind,
        concurrency=concurrency,
        lease=LEASE,
        queues=queues,
        extra=("--log-level", "INFO"),
    )


async def wait_started(workers: WorkerProcesses, procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait until each of these workers has connected and started claiming."""
    await wait_until(
        lambda: all(STARTED in workers.output(p) for p in procs),
        timeout=60,
        message="the workers to start",
    )


async def stop_workers(workers: WorkerProcesses) -> None:
    """Stop every live worker gracefully (SIGTERM), so that each hands in the outcomes it still
    holds (a late one is refused), and check that no worker ended any other way than by that or
    by the test's SIGKILL. Waits without blocking the event loop, which may run the proxy that
    the workers' connections go through."""
    live = [proc for proc in workers.procs if proc.poll() is None]
    for proc in live:
        proc.send_signal(signal.SIGTERM)
    await wait_until(
        lambda: all(proc.poll() is not None for proc in live),
        timeout=60,
        message="the workers to stop",
    )
    for proc in workers.procs:
        assert proc.returncode in (0, -signal.SIGKILL), workers.output(proc)
