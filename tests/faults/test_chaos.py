"""Chaos: faults injected at random moments, on every shared backend, while ``sitq worker``
processes (lease 2 s) work; every case checks that each task ends in exactly one final state.

1. ``test_chaos_run``: 3,000 tasks of mixed sorts (quick calls, short sleeps, calls that fail and
   are retried, calls that always fail, calls that time out on their first run), coroutine and
   plain functions alike, enqueued in batches while four workers of mixed kinds (async, thread,
   process) drain them; every 0.5-2 s one worker, chosen at random, is killed with SIGKILL
   (its whole process group, the process kind's children too) and replaced by a new worker of a
   random kind.
2. ``test_frozen_worker_finishes_its_run_and_is_refused``: a worker frozen with SIGSTOP in the
   middle of a task, past its lease; another worker takes the task over and finishes it, then the
   frozen one is resumed, finishes its own run, hands its outcome in, and the backend refuses it
   (the stored result stays the other worker's). A second variant, whose run awaits on the loop,
   may instead be stopped by the resumed worker's heartbeat; the store is checked the same way.
3. ``test_cron_ticks_while_workers_are_killed``: a schedule ticking every second, driven by four
   workers of which one is killed and replaced just before or just after most tick boundaries for
   10 s; every tick of the window runs, as one task with one result.

Every task logs each execution (``chaos_tasks.py``), so executions can be counted against the
attempts the store recorded. Each case prints its seed; ``SITQ_CHAOS_SEED=<seed>`` replays the
same plan (which tasks, which workers, which kills; the timing of a run is never the same).
Figures go to the "sitq fault injection" section at the end of pytest's output.

Run them with ``.venv/bin/pytest tests/faults/test_chaos.py -m chaos``.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sitq import (
    BackendError,
    FixedBackoff,
    Result,
    RetryPolicy,
    TaskNotFound,
    TaskQueue,
    TaskStatus,
)
from sitq.cron import tick_task_id
from tests.conftest import BackendFactory, WorkerProcesses, wait_until
from tests.faults import chaos_tasks
from tests.faults.conftest import (
    LEASE,
    Figures,
    fault_url,
    lost_line,
    refused_line,
    stop_workers,
    wait_started,
    worker_notices,
)

pytestmark = pytest.mark.chaos

Report = Callable[[Figures], None]
Worker = subprocess.Popen[bytes]

KINDS = ("async", "thread", "process")
#: Tasks at once per worker kind; the process kind runs a child process per slot.
CONCURRENCY = {"async": 8, "thread": 8, "process": 2}


def seeded(case: str) -> tuple[int, random.Random]:
    """The case's seed (printed, and taken from ``SITQ_CHAOS_SEED`` when set) and its random
    generator."""
    seed = int(os.environ.get("SITQ_CHAOS_SEED") or random.randrange(1 << 32))
    print(f"{case}: SITQ_CHAOS_SEED={seed}")
    return seed, random.Random(seed)


def start_worker(workers: WorkerProcesses, url: str, kind: str) -> Worker:
    """A ``sitq worker`` of ``kind`` with the suite's lease, logging when it has started."""
    return workers.start(
        url, kind=kind, concurrency=CONCURRENCY[kind], lease=LEASE, extra=("--log-level", "INFO")
    )


def kill(worker: Worker) -> None:
    """SIGKILL the worker's whole process group (its task processes too), and reap it."""
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()


def stopped(pid: int) -> bool:
    """Whether the process is stopped (by SIGSTOP)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "T"


async def final_result(queue: TaskQueue, task_id: str, deadline: float) -> Result:
    """The task's final result, waited for until ``deadline`` (``time.monotonic()``)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"task {task_id} reached no final state in time: stuck")
        try:
            result = await queue.get_result(task_id, timeout=min(left, 10))
        except BackendError:
            await asyncio.sleep(0.1)
            continue
        if result is not None:
            return result


async def final_results(queue: TaskQueue, ids: Sequence[str], timeout: float) -> list[Result]:
    """Every task's final result, within ``timeout`` seconds for all of them."""
    deadline = time.monotonic() + timeout
    results: list[Result] = []
    for start in range(0, len(ids), 200):
        chunk = ids[start : start + 200]
        results += await asyncio.gather(*(final_result(queue, i, deadline) for i in chunk))
    return results


async def counts(queue: TaskQueue) -> tuple[int, int, int, int, int, int]:
    """The default queue's (succeeded, failed, cancelled, pending, scheduled, running)."""
    stats = {s.queue: s for s in await queue.stats()}.get("default")
    if stats is None:
        return (0, 0, 0, 0, 0, 0)
    return (
        stats.succeeded,
        stats.failed,
        stats.cancelled,
        stats.pending,
        stats.scheduled,
        stats.running,
    )


# -- 1. the chaos run ---------------------------------------------------------------------------

CHAOS_TOTAL = 3_000
#: Tasks are enqueued in batches of this many, one batch every BATCH_EVERY seconds, so that
#: the kills land all along the run rather than on a queue that drains in a few seconds.
BATCH = 150
BATCH_EVERY = 0.5
KILL_EVERY = (0.5, 2.0)
#: The kills stop once every task has been enqueued and this fraction of them has started.
KILLS_UNTIL = 0.95
KILLS_AT_MOST_FOR = 90.0
#: Once the kills stop, every task must reach its final state within this.
SETTLE_DEADLINE = 120.0

NAP = (0.02, 0.3)
FLAKY_RETRY = RetryPolicy(max_attempts=4, backoff=FixedBackoff(0.05))
DOOMED_RETRY = RetryPolicy(max_attempts=2, backoff=FixedBackoff(0.05))
SLOW_FIRST = 1.0
SLOW_TIMEOUT = 0.3
SLOW_RETRY = RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.05))


@dataclass(frozen=True)
class Planned:
    """One task of the chaos run and what must become of it."""

    item: int
    sort: str
    func: Callable[..., Any]
    args: tuple[Any, ...]
    options: str
    fails: bool = False
    #: The least number of attempts its final result must show.
    least_attempts: int = 1


OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "flaky": {"retry": FLAKY_RETRY},
    "doomed": {"retry": DOOMED_RETRY},
    "slow": {"retry": SLOW_RETRY, "timeout": SLOW_TIMEOUT},
}


def plan(rng: random.Random, log_dir: str, total: int) -> list[Planned]:
    """The tasks: about 55% quick calls, 20% short sleeps, 13% calls failing once or twice
    before they succeed, 8% calls that always fail (final state failed, after one retry) and 4%
    calls that overrun their timeout on their first run; coroutine and plain functions mixed."""
    tasks: list[Planned] = []
    for item in range(total):
        roll = rng.random()
        sync = rng.random() < 0.5
        func: Callable[..., Any]
        if roll < 0.55:
            func = chaos_tasks.quick_sync if sync else chaos_tasks.quick
            tasks.append(Planned(item, "quick", func, (log_dir, item), "plain"))
        elif roll < 0.75:
            func = chaos_tasks.nap_sync if sync else chaos_tasks.nap
            naptime = round(rng.uniform(*NAP), 3)
            tasks.append(Planned(item, "nap", func, (log_dir, item, naptime), "plain"))
        elif roll < 0.88:
            failures = rng.randint(1, 2)
            tasks.append(
                Planned(
                    item,
                    "flaky",
                    chaos_tasks.flaky,
                    (log_dir, item, failures),
                    "flaky",
                    least_attempts=failures + 1,
                )
            )
        elif roll < 0.96:
            tasks.append(
                Planned(
                    item,
                    "doomed",
                    chaos_tasks.doomed,
                    (log_dir, item),
                    "doomed",
                    fails=True,
                    least_attempts=DOOMED_RETRY.max_attempts,
                )
            )
        else:
            func = chaos_tasks.slow_first_sync if sync else chaos_tasks.slow_first
            tasks.append(
                Planned(item, "slow", func, (log_dir, item, SLOW_FIRST), "slow", least_attempts=2)
            )
    return tasks


def check_outcome(task: Planned, result: Result, queue: TaskQueue, runs: int) -> None:
    """The one final state the task must have, given ``runs`` executions in its log."""
    where = f"item {task.item} ({task.sort}, {result.task_id})"
    if task.fails:
        assert result.status == TaskStatus.FAILED, (where, result.status, result.error)
        assert result.error is not None and f"doomed item {task.item}" in result.error, (
            where,
            result.error,
        )
    else:
        assert result.status == TaskStatus.SUCCESS, (where, result.status, result.error)
        assert queue.serializer.loads(result.value or b"") == task.item, where
    assert result.attempts >= task.least_attempts, (where, result.attempts)
    # Every execution is a claim, and every claim counts an attempt: a task that ran more
    # often than the store counted ran without holding the claim.
    assert 1 <= runs <= result.attempts, (where, f"{runs} executions", result.attempts)


def snapshot(result: Result) -> tuple[Any, ...]:
    return (result.status, result.value, result.error, result.attempts, result.finished_at)


@pytest.mark.timeout(360)
async def test_chaos_run(
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    log_dir: Path,
    report: Report,
) -> None:
    """3,000 mixed tasks through four workers of mixed kinds, one of them SIGKILLed (with its
    process group) and replaced every 0.5-2 s. At the end every task has exactly its one
    expected final state (a success with its own value, or the failure of the task that always
    fails), ran at least once and never more often than the attempts its result counts, and
    the queue holds exactly those results and nothing pending, running or scheduled; the same
    holds after the workers are stopped gracefully and hand in whatever they still hold."""
    assert shared_backends.url is not None
    url = fault_url(shared_backends.url)
    seed, rng = seeded("chaos run")
    began = time.monotonic()
    tasks = plan(random.Random(rng.random()), str(log_dir), CHAOS_TOTAL)
    kill_rng = random.Random(rng.random())
    live = [start_worker(worker_processes, url, kind) for kind in (*KINDS, kill_rng.choice(KINDS))]
    await wait_started(worker_processes, live)
    ids: list[str | None] = [None] * CHAOS_TOTAL
    kills: list[str] = []

    async with TaskQueue(url) as queue:
        views = {name: queue.options(**options) for name, options in OPTIONS.items()}

        async def feed() -> None:
            for start in range(0, CHAOS_TOTAL, BATCH):
                batch = tasks[start : start + BATCH]
                for name, view in views.items():
                    group = [t for t in batch if t.options == name]
                    if group:
                        new = await view.enqueue_many([(t.func, t.args) for t in group])
                        for task, task_id in zip(group, new, strict=True):
                            ids[task.item] = task_id
                await asyncio.sleep(BATCH_EVERY)  # the pace of the load

        def started() -> int:
            return len(chaos_tasks.events(log_dir))

        feeding = asyncio.create_task(feed())
        stop_at = time.monotonic() + KILLS_AT_MOST_FOR
        while time.monotonic() < stop_at and not (
            feeding.done() and started() >= KILLS_UNTIL * CHAOS_TOTAL
        ):
            await asyncio.sleep(kill_rng.uniform(*KILL_EVERY))  # the schedule of the kills
            victim = live.pop(kill_rng.randrange(len(live)))
            kill(victim)
            kind = kill_rng.choice(KINDS)
            kills.append(kind)
            live.append(start_worker(worker_processes, url, kind))
        await feeding
        killed_after = time.monotonic() - began

        assert None not in ids
        task_ids = [i for i in ids if i is not None]
        results = await final_results(queue, task_ids, SETTLE_DEADLINE)
        runs = chaos_tasks.events(log_dir)
        for task, result in zip(tasks, results, strict=True):
            assert result.task_id == task_ids[task.item]
            check_outcome(task, result, queue, runs[str(task.item)])
        failing = sum(1 for t in tasks if t.fails)
        expected = (CHAOS_TOTAL - failing, failing, 0, 0, 0, 0)
        assert await counts(queue) == expected

        before = [snapshot(r) for r in results]
        # A worker stopped before it has set up its signal handlers would die of the SIGTERM.
        await wait_started(worker_processes, live)
        await stop_workers(worker_processes)
        after = [snapshot(r) for r in await final_results(queue, task_ids, 60)]
        changed = [
            task_ids[n] for n, (a, b) in enumerate(zip(before, after, strict=True)) if a != b
        ]
        assert not changed, f"results changed by outcomes handed in at shutdown: {changed[:10]}"
        assert await counts(queue) == expected

    refused, lost = worker_notices(worker_processes)
    attempts = {result.task_id: result.attempts for result in results}
    # An outcome is refused only because a later claim of the same task superseded it.
    assert all(attempts[task_id] >= 2 for task_id in refused), refused
    executions = sum(runs.values())
    repeated = sum(1 for task in tasks if runs[str(task.item)] > 1 and task.options == "plain")
    note = (
        f"{len(kills)} workers killed and replaced in {killed_after:.0f} s "
        f"(replacements: {', '.join(f'{kills.count(k)} {k}' for k in KINDS)}); "
        f"{failing} failed as planned; {repeated} tasks without retries ran again; "
        f"SITQ_CHAOS_SEED={seed}"
    )
    report(
        Figures(
            case="chaos run",
            backend=shared_backends.name,
            enqueued=CHAOS_TOTAL,
            executions=executions,
            results=len(results),
            refused=len(refused),
            recorded_retries=0,
            lost=lost,
            seconds=time.monotonic() - began,
            note=note,
        )
    )


# -- 2. a frozen worker finishes its run after being resumed ------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("hold_loop", [True, False], ids=["run-holds-the-loop", "run-awaits"])
async def test_frozen_worker_finishes_its_run_and_is_refused(
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    log_dir: Path,
    report: Report,
    hold_loop: bool,
) -> None:
    """An async worker runs a task that waits for a reply from the test over a Unix socket, as
    a task waits for a remote service; the test freezes the worker (SIGSTOP to its process group)
    while it waits, for longer than the lease (2 s). A second worker, of a random kind, takes the
    task over and finishes it. Then the reply arrives, still during the freeze, and the worker
    is resumed (SIGCONT). The store must keep the second worker's result unchanged (status,
    value, attempts 2, finish time), before and after the workers are stopped.

    ``run-holds-the-loop``: the run waits with a blocking read, so the freeze lands in the
    middle of its step on the event loop. Resumed, the run ends in that same step and hands its
    outcome to the worker before the worker's heartbeat (whose timer ran out during the freeze)
    gets a turn; the worker sends the outcome, and the backend must refuse it by its fencing
    token. ``run-awaits``: the run awaits its reply on the loop. Resumed, the loop runs the
    timers that ran out before it looks for I/O (asyncio and uvloop alike skip the poll when a
    resumed ``epoll_wait`` fails with EINTR past its timeout), so the heartbeat runs first:
    where its check ends within its own step (SQLite, whose statements mostly run on the
    loop), it learns that the claim was lost and stops the run, which hands nothing in; on the
    server backends the run's reply is seen while the heartbeat waits for its answer, so the
    run ends and its outcome is refused. Either is right; the case accepts either, and checks
    the store the same way."""
    assert shared_backends.url is not None
    url = fault_url(shared_backends.url)
    seed, rng = seeded("frozen worker")
    began = time.monotonic()
    callers: dict[int, asyncio.StreamWriter] = {}

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        callers[int(await reader.readline())] = writer

    def ends() -> list[int]:
        return chaos_tasks.pids(log_dir, "reply", "end")

    # A short path of its own: a Unix socket's path may not exceed 107 bytes.
    short = tempfile.TemporaryDirectory(prefix="sitq-chaos-")
    address = Path(short.name) / "reply.sock"
    server = await asyncio.start_unix_server(answer, path=str(address))
    try:
        frozen = start_worker(worker_processes, url, "async")
        await wait_started(worker_processes, [frozen])
        async with TaskQueue(url) as queue:
            task_id = await queue.enqueue(
                chaos_tasks.await_reply, str(log_dir), "reply", str(address), hold_loop
            )
            await wait_until(
                lambda: frozen.pid in callers, message="the task to wait for its reply"
            )
            os.killpg(frozen.pid, signal.SIGSTOP)
            try:
                await wait_until(lambda: stopped(frozen.pid), message="the worker to stop")
                kind = rng.choice(KINDS)
                worker_processes.start(url, kind=kind, concurrency=2, lease=LEASE)
                taken = await queue.get_result(task_id, timeout=60)
                assert taken is not None and taken.status == TaskStatus.SUCCESS, taken
                value = queue.serializer.loads(taken.value or b"")
                assert value != frozen.pid
                assert taken.attempts == 2
                assert ends() == [value]
                assert stopped(frozen.pid), "the first worker stayed frozen meanwhile"
                callers[frozen.pid].write(b"!")
                await callers[frozen.pid].drain()
            finally:
                os.killpg(frozen.pid, signal.SIGCONT)
            refusal = refused_line(task_id)
            loss = lost_line(task_id)
            await wait_until(
                lambda: (
                    refusal.search(worker_processes.output(frozen)) is not None
                    or (not hold_loop and loss.search(worker_processes.output(frozen)) is not None)
                ),
                message="the resumed worker's outcome to be refused"
                + ("" if hold_loop else ", or its run stopped"),
            )
            was_refused = refusal.search(worker_processes.output(frozen)) is not None
            if was_refused:
                # It finished its own run before handing the outcome in.
                assert ends() == [value, frozen.pid]
            assert await queue.get_result(task_id) == taken, "the resumed worker changed it"
            await stop_workers(worker_processes)
            assert await queue.get_result(task_id) == taken
            assert await counts(queue) == (1, 0, 0, 0, 0, 0)
    finally:
        server.close()
        for writer in callers.values():
            writer.close()
        await server.wait_closed()
        short.cleanup()
    assert chaos_tasks.pids(log_dir, "reply", "start") == [frozen.pid, value]
    refused, lost = worker_notices(worker_processes)
    if was_refused:
        assert refused == [task_id]
        what = "the resumed async worker finished its run; its outcome was refused"
    else:
        assert refused == [] and ends() == [value]
        what = "the resumed async worker's heartbeat found the lease lost and stopped its run"
    note = f"{what}; the task kept the {kind} worker's result (attempts 2); SITQ_CHAOS_SEED={seed}"
    report(
        Figures(
            case=f"frozen worker ({'run holds the loop' if hold_loop else 'run awaits'})",
            backend=shared_backends.name,
            enqueued=1,
            executions=2,
            results=1,
            refused=len(refused),
            recorded_retries=0,
            lost=lost,
            seconds=time.monotonic() - began,
            note=note,
        )
    )


# -- 3. cron ticks while workers are killed -----------------------------------------------------

CRON = "chaos-tick"
EVERY_SECOND = "* * * * * *"
CRON_WORKERS = 4
#: Tick boundaries with kills around them.
CRON_SECONDS = 10
KILL_CHANCE = 0.8
#: A kill lands this many seconds around a tick boundary: before the workers wake for the
#: tick, or just after, while they enqueue it and advance the schedule.
KILL_OFFSET = (-0.05, 0.03)


@pytest.mark.timeout(120)
async def test_cron_ticks_while_workers_are_killed(
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    log_dir: Path,
    report: Report,
) -> None:
    """A schedule ticking every second (misfire ``once``), driven by four async workers; around
    each of 10 tick boundaries (80% of them, at random) one worker, chosen at random, is
    SIGKILLed 50 ms before to 30 ms after the boundary and a new one started. With at least
    three workers driving the schedule at every moment, no tick is ever a second late, so the
    misfire policy drops none: every tick of the window runs. Each tick is one task under its
    tick id, with one final result; the queue holds no task besides the ticks, and a tick ran
    more than once only when a worker was lost with it (never more often than its result's
    attempts)."""
    assert shared_backends.url is not None
    url = fault_url(shared_backends.url)
    seed, rng = seeded("cron")
    began = time.monotonic()
    live = [start_worker(worker_processes, url, "async") for _ in range(CRON_WORKERS)]
    await wait_started(worker_processes, live)
    kills = 0
    async with TaskQueue(url) as queue:

        async def last_tick() -> float:
            (info,) = await queue.list_crons()
            assert info.last_tick is not None
            return info.last_tick.timestamp()

        await queue.add_cron(CRON, EVERY_SECOND, chaos_tasks.cron_tick, args=(str(log_dir),))
        start = await last_tick()
        first = math.floor(time.time()) + 1
        for boundary in range(first, first + CRON_SECONDS):
            if rng.random() >= KILL_CHANCE:
                continue
            when = boundary + rng.uniform(*KILL_OFFSET)
            await asyncio.sleep(max(when - time.time(), 0))  # the schedule of the kills
            kill(live.pop(rng.randrange(len(live))))
            kills += 1
            live.append(start_worker(worker_processes, url, "async"))
        end = first + CRON_SECONDS

        async def passed_end() -> bool:
            return await last_tick() >= end

        await wait_until(passed_end, timeout=30, message="the schedule to pass the window")
        window = range(int(start) + 1, end + 1)
        missing, results = [], {}
        for tick in window:
            try:
                result = await queue.get_result(tick_task_id(CRON, tick), timeout=30)
            except TaskNotFound:
                missing.append(tick)
                continue
            assert result is not None, f"tick {tick} did not finish"
            results[tick] = result
        assert not missing, f"ticks lost: {missing} of {window.start}..{window.stop - 1}"
        assert all(r.status == TaskStatus.SUCCESS for r in results.values()), results

        # A worker stopped before it has set up its signal handlers would die of the SIGTERM.
        await wait_started(worker_processes, live)
        await stop_workers(worker_processes)
        last = await last_tick()
        ticks = {}
        # The tick after ``last`` may have been enqueued just before the workers stopped.
        for tick in range(int(start) + 1, int(last) + 2):
            status = await queue.get_status(tick_task_id(CRON, tick))
            if status is not None:
                ticks[tick_task_id(CRON, tick)] = (tick, status)
        assert sum(await counts(queue)) == len(ticks), "a task besides the ticks in the queue"
        runs = chaos_tasks.events(log_dir)
        assert set(runs) <= set(ticks), "a run of a task that is not a tick"
        for task_id, (tick, status) in ticks.items():
            if status.is_final:
                result = await queue.get_result(task_id)
                assert result is not None and result.status == TaskStatus.SUCCESS, result
                assert 1 <= runs[task_id] <= result.attempts, (tick, runs[task_id], result)
    refused, lost = worker_notices(worker_processes)
    again = sum(1 for n in runs.values() if n > 1)
    note = (
        f"{kills} workers killed around {CRON_SECONDS} tick boundaries; {len(window)} ticks in "
        f"the window, all run; {again} ticks ran again after a lost worker; "
        f"SITQ_CHAOS_SEED={seed}"
    )
    report(
        Figures(
            case="cron ticks with workers killed",
            backend=shared_backends.name,
            enqueued=len(ticks),
            executions=sum(runs.values()),
            results=sum(1 for _, status in ticks.values() if status.is_final),
            refused=len(refused),
            recorded_retries=0,
            lost=lost,
            seconds=time.monotonic() - began,
            note=note,
        )
    )
