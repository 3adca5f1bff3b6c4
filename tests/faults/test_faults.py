"""Fault injection: under each fault, on every backend it applies to, every task still ends with
exactly one final result, and nothing is lost.

Each case drains tasks through ``sitq worker`` processes (lease 2 s) of every kind: async, thread
and process workers side by side (``FLEET``); every task appends one line per execution to a
log, so that executions can be counted against results. Each case checks
every task's result, then stops the workers gracefully (so that late outcomes are handed in and
refused) and checks the queue again, and reports its figures in the "sitq fault injection"
section at the end of pytest's output (see ``conftest.py``). The cases:

1. ``test_sigkill_workers_during_a_drain``: 10,000 tasks, 4 workers, 8 of them SIGKILLed at random
   moments (each kind in turn) and replaced by one of the same kind.
2. ``test_connections_cut_and_restored_mid_drain``: every connection of the workers reset by a
   TCP proxy, new ones refused for longer than the lease (server backends only).
3. ``test_worker_paused_past_its_lease``: a worker stopped with SIGSTOP past its lease, then
   resumed: its late result is refused by fencing.
4. ``test_clock_jumps_on_workers_mid_drain``: two workers' clocks jump 60 s ahead and back.
5. ``test_server_crash_and_restart_mid_drain``: the test's own Redis, NATS or PostgreSQL server
   crashed and started again.

Run them with ``.venv/bin/pytest tests/faults -q``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from sitq import TaskQueue
from tests.conftest import BackendFactory, WorkerProcesses, wait_until
from tests.faults import tasks
from tests.faults.conftest import (
    FLEET,
    Drain,
    Figures,
    fault_url,
    refused_line,
    start_worker,
    stop_workers,
    wait_started,
)
from tests.servers import OwnServer, TcpProxy

WORKERS = len(FLEET)
#: The kinds whose workers are killed in turn.
KINDS = ("async", "thread", "process")
#: Tasks per drain, but for the SIGKILL case.
TOTAL = 3_000

Report = Callable[[Figures], None]


# -- 1. SIGKILL ---------------------------------------------------------------------------------

KILL_TOTAL = 10_000
KILLS = 8


@pytest.mark.timeout(240)
async def test_sigkill_workers_during_a_drain(
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    log_dir: Path,
    report: Report,
) -> None:
    """Four workers of every kind drain 10,000 tasks; at eight random points of the drain (a
    seeded random fraction of the tasks executed, so that the kills land at different stages on
    every backend whatever its speed) one of them is killed with SIGKILL (a worker of each kind
    in turn, chosen at random among those, with its pool's processes) and a new one of the same
    kind is started in its place. The killed worker's claims come back after their lease and run
    again elsewhere (at-least-once). The seed is printed; ``SITQ_FAULT_SEED`` replays a run."""
    assert shared_backends.url is not None
    url = fault_url(shared_backends.url)
    seed = int(os.environ.get("SITQ_FAULT_SEED") or random.randrange(1 << 32))
    print(f"SITQ_FAULT_SEED={seed}")
    rng = random.Random(seed)
    live = [(kind, start_worker(worker_processes, url, kind=kind)) for kind in FLEET]

    async def kill_and_replace() -> None:
        points = sorted(rng.uniform(0.05, 0.9) for _ in range(KILLS))
        for i, point in enumerate(points):
            await drain.wait_executed(int(point * KILL_TOTAL), timeout=120)
            kind = KINDS[i % len(KINDS)]
            victim = rng.choice([w for w in live if w[0] == kind])
            live.remove(victim)
            os.killpg(victim[1].pid, signal.SIGKILL)
            victim[1].wait()
            live.append((kind, start_worker(worker_processes, url, kind=kind)))

    async with TaskQueue(url) as queue:
        drain = Drain(queue, log_dir, KILL_TOTAL)
        results = await drain.run(worker_processes, [p for _, p in live], kill_and_replace, at=0)
    note = f"{KILLS} workers of every kind killed and replaced (SITQ_FAULT_SEED={seed})"
    report(
        drain.figures("SIGKILL of workers", shared_backends.name, worker_processes, results, note)
    )


# -- 2. connections cut -------------------------------------------------------------------------

OUTAGE = 3.0


def through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return parts._replace(netloc=netloc).geturl()


@pytest.mark.timeout(180)
async def test_connections_cut_and_restored_mid_drain(
    server_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    log_dir: Path,
    report: Report,
) -> None:
    """The workers reach the shared server only through a TCP proxy that the test runs
    (``TcpProxy``); the test's own client connects directly. A quarter of the way through the
    drain the proxy resets every connection (normal, listening and pub/sub ones alike) and
    refuses new ones for 3 s, longer than the lease, then accepts again. The workers reconnect
    by themselves; leases that ran out meanwhile are taken over, and the late outcomes of their
    first holders are refused by fencing. Outcomes whose write was applied just as the connection
    went, but whose reply was lost, are sent again and found already recorded. Not for SQLite,
    which has no connection to cut."""
    assert server_backends.url is not None
    url = fault_url(server_backends.url)
    target = urlsplit(url)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy(target.hostname, target.port)
    await proxy.start()
    connections = at_cut = 0

    async def cut_and_restore() -> None:
        nonlocal connections, at_cut
        at_cut = drain.executed()
        connections = await proxy.cut()
        await asyncio.sleep(OUTAGE)  # the outage itself: connections are refused meanwhile
        await proxy.start()

    try:
        procs = [
            start_worker(worker_processes, through(url, proxy.port), kind=kind) for kind in FLEET
        ]
        async with TaskQueue(url) as queue:
            drain = Drain(queue, log_dir, TOTAL)
            results = await drain.run(worker_processes, procs, cut_and_restore)
        assert proxy.accepted > WORKERS, "the workers connected again"
    finally:
        await proxy.close()
    assert at_cut < TOTAL, "the cut came before the end of the drain"
    note = f"{connections} connections cut after {at_cut} tasks had run, new ones refused for 3 s"
    report(drain.figures("connections cut", server_backends.name, worker_processes, results, note))


# -- 3. a paused worker -------------------------------------------------------------------------

PAUSE_TOTAL = 500
QUEUES = ("pause", "default")


def stopped(pid: int) -> bool:
    """Whether the process is stopped (by SIGSTOP)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


@pytest.mark.timeout(120)
async def test_worker_paused_past_its_lease(
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    log_dir: Path,
    report: Report,
) -> None:
    """One worker claims a task that stops its own process (SIGSTOP) at the worst moment: with
    the attempt's outcome about to be handed over (``tasks.pause_own_worker_once``). While it is
    stopped, two other workers drain 500 tasks and, once the lease has run out, take the paused
    task over and record its result. Then the test resumes the paused worker (SIGCONT): it sends
    its outcome, which the backend must refuse, its fencing token being no longer current. The
    paused worker is an async one (the task stops it from its event loop); the other two are a
    thread and a process worker."""
    assert shared_backends.url is not None
    url = fault_url(shared_backends.url)
    async with TaskQueue(url) as queue:
        paused_id = await queue.options(queue="pause").enqueue(
            tasks.pause_own_worker_once, str(log_dir), "pause"
        )
        drain = Drain(queue, log_dir, PAUSE_TOTAL)
        paused = start_worker(worker_processes, url, concurrency=4, queues=QUEUES)
        await wait_until(lambda: stopped(paused.pid), message="the worker to pause itself")
        others = [
            start_worker(worker_processes, url, kind=kind, queues=QUEUES)
            for kind in ("thread", "process")
        ]
        await wait_started(worker_processes, others)
        await drain.enqueue()
        # The other workers take the paused task over once its lease has run out.
        value = await queue.get_value(paused_id, timeout=60)
        assert value != paused.pid
        await drain.wait_executed(PAUSE_TOTAL)
        results = await drain.check_results()
        os.kill(paused.pid, signal.SIGCONT)
        await wait_until(
            lambda: refused_line(paused_id).search(worker_processes.output(paused)) is not None,
            message="the resumed worker's outcome to be refused",
        )
        await stop_workers(worker_processes)
        result = await queue.get_result(paused_id)
        assert result is not None and result.attempts == 2
        assert queue.serializer.loads(result.value or b"") == value
        await drain.check_stats()
    executions = len((log_dir / "pause.log").read_text().splitlines())
    assert executions == 2, "the paused task ran in the paused worker and in the one that took over"
    note = f"the paused worker's result refused, the task kept worker {value}'s (attempts 2)"
    figures = drain.figures(
        "worker paused past its lease",
        shared_backends.name,
        worker_processes,
        results + 1,
        note,
        others={paused_id: executions},
    )
    report(figures)


# -- 4. clock jumps -----------------------------------------------------------------------------

JUMPS = (+60.0, -60.0)
CLOCK_SHIM = Path(__file__).resolve().parent / "clock"


@pytest.mark.timeout(120)
async def test_clock_jumps_on_workers_mid_drain(
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    log_dir: Path,
    report: Report,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two of the four workers run with a startup shim (``clock/sitecustomize.py``, on the
    PYTHONPATH of those two processes only) that shifts ``time.time()`` when the process gets
    SIGUSR1; a quarter of the way through the drain one worker's clock jumps 60 s ahead and the
    other's 60 s back, far more than the lease.

    PostgreSQL and Redis judge leases and due times by the server's clock, so a jump changes
    nothing there. The NATS client estimates the server's clock from its own plus an offset
    measured at connect; it notices the step against its steady clock and takes it out. SQLite
    has no server: every process reads its own clock, so a worker whose clock runs ahead sees
    the other workers' leases as expired and takes their tasks over (they run twice, and the
    outcomes of the workers that lost them are refused by fencing), and a worker whose clock
    runs behind sees every task as not yet due and idles. (On one machine a real step moves
    every process's clock at once; the shim shows the worst case.)"""
    assert shared_backends.url is not None
    url = fault_url(shared_backends.url)
    procs = [start_worker(worker_processes, url, kind=kind) for kind in ("process", "async")]
    skewed = []
    # The skewed workers run their tasks in their own process, whose executions the log counts
    # by pid.
    for jump, kind in zip(JUMPS, ("thread", "async"), strict=True):
        with monkeypatch.context() as env:
            path = os.environ.get("PYTHONPATH", "")
            env.setenv("PYTHONPATH", os.pathsep.join([str(CLOCK_SHIM), path]))
            env.setenv("SITQ_FAULT_CLOCK_JUMP", str(jump))
            skewed.append(start_worker(worker_processes, url, kind=kind))
    at_jump, runs_before = 0, Counter[int]()

    async def jump_clocks() -> None:
        nonlocal at_jump, runs_before
        for proc in skewed:
            os.kill(proc.pid, signal.SIGUSR1)
        for proc, jump in zip(skewed, JUMPS, strict=True):
            await wait_until(
                lambda p=proc, j=jump: f"clock jumped by {j:+g} s" in worker_processes.output(p),
                message="the clock to jump",
            )
        at_jump, runs_before = drain.executed(), drain.runs_by_pid()

    async with TaskQueue(url) as queue:
        drain = Drain(queue, log_dir, TOTAL)
        # A worker whose clock jumped must not hold tasks back by its jump: the drain ends well
        # within the jump (it takes seconds).
        jumped = abs(JUMPS[1])
        results = await drain.run(worker_processes, procs + skewed, jump_clocks, timeout=jumped / 2)
    after = drain.runs_by_pid() - runs_before
    ahead, behind = (after[proc.pid] for proc in skewed)
    if shared_backends.name != "sqlite":
        # Judged by the server's clock, a worker whose clock jumped works on as before.
        assert ahead > 0 and behind > 0, (ahead, behind)
    note = (
        f"clocks jumped +60 s and -60 s on two workers after {at_jump} tasks had run; "
        f"after the jump those ran {ahead} and {behind} tasks"
    )
    report(drain.figures("clock jump", shared_backends.name, worker_processes, results, note))


# -- 5. a server crash --------------------------------------------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("started_server", ["redis", "nats", "postgres"], indirect=True)
async def test_server_crash_and_restart_mid_drain(
    started_server: OwnServer, worker_processes: WorkerProcesses, log_dir: Path, report: Report
) -> None:
    """The test's own server on a free loopback port (``OwnServer``): Redis with ``appendfsync
    always`` (killed with SIGKILL), NATS JetStream with its file store (SIGKILL), PostgreSQL in a
    throwaway cluster (an immediate stop, which skips the checkpoint, so that the start recovers
    from the WAL as after a crash). A quarter of the way through the drain the server is crashed
    and started again on the same data; the workers and the test's client reconnect by
    themselves."""
    url = fault_url(started_server.url)
    crashed_at = 0

    async def crash_and_restart() -> None:
        nonlocal crashed_at
        crashed_at = drain.executed()
        started_server.crash()
        await started_server.start()

    procs = [start_worker(worker_processes, url, kind=kind) for kind in FLEET]
    async with TaskQueue(url) as queue:
        drain = Drain(queue, log_dir, TOTAL)
        results = await drain.run(worker_processes, procs, crash_and_restart)
    assert crashed_at < TOTAL, "the crash came before the end of the drain"
    note = f"the server crashed after {crashed_at} tasks had run"
    report(
        drain.figures(
            "server crash and restart", started_server.name, worker_processes, results, note
        )
    )
