"""docs/contract.md, No busy waiting: an idle worker costs close to no CPU: it blocks on the
backend's push channel, or waits out its poll interval, and never spins.

``test_an_idle_worker_makes_few_calls_and_wakeups`` runs a worker of each kind (async, thread,
process) in this process on every backend, on a backend object of its own whose public methods
count their calls (each call still goes to the real backend). Once the worker is idle it
measures a quiet window:

* the backend calls the worker made: each one is a round trip and work for the server, so a
  worker that polls fast shows here even when the polling costs its own process little;
* the wake-ups of this process and of the worker's child processes (a process worker's pool):
  the voluntary context switches of all their threads, so that a thread or a child that wakes
  every few milliseconds shows even when each wake-up is cheap;
* the CPU time of this process and of the worker's children.

At the default poll interval of 1 s an idle worker makes about three calls a second (a claim, a
wait for work, a look at the cron schedules) and wakes a few times a second; an idle poll of
5 ms makes hundreds of each.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import pytest

from sitq import AsyncWorker, ProcessWorker, TaskQueue, ThreadWorker
from sitq.worker import Worker
from tests.conformance import tasks
from tests.conformance.backend_calls import CallLog
from tests.conformance.processes import process_tree, usage
from tests.conftest import BackendFactory

KINDS: dict[str, type[Worker]] = {
    "async": AsyncWorker,
    "thread": ThreadWorker,
    "process": ProcessWorker,
}
#: The quiet window measured, in seconds.
WINDOW = 2.0
#: Backend calls an idle worker may make per second (about three at the default poll interval
#: of 1 s; an idle poll of 5 ms makes hundreds).
CALLS_PER_SECOND = 8
#: Wake-ups per second over every thread measured (a few when idle; one thread polling every
#: 5 ms adds 200).
WAKEUPS_PER_SECOND = 50
#: The share of one CPU the measured processes may use while the worker idles.
CPU_SHARE = 0.05


async def measure_idle(pids: Callable[[], list[int]]) -> tuple[float, float, int]:
    """Seconds measured, CPU seconds and wake-ups of the processes ``pids()`` names, over
    ``WINDOW`` seconds."""
    measured = pids()
    cpu_before, wakeups_before = usage(measured)
    started = time.monotonic()
    await asyncio.sleep(WINDOW)  # measuring an interval, not waiting for an outcome
    seconds = time.monotonic() - started
    cpu_after, wakeups_after = usage(measured)
    return seconds, cpu_after - cpu_before, wakeups_after - wakeups_before


def check_idle(what: str, seconds: float, cpu: float, wakeups: int) -> None:
    print(f"{what}, idle {seconds:.1f} s: {wakeups} wake-ups, {cpu:.3f} s CPU")
    assert wakeups <= WAKEUPS_PER_SECOND * seconds, (
        f"{what} woke {wakeups} times in {seconds:.1f} s while idle"
    )
    assert cpu <= CPU_SHARE * seconds, f"{what} used {cpu:.2f} s CPU in {seconds:.1f} s while idle"


@pytest.mark.parametrize("kind", KINDS)
async def test_an_idle_worker_makes_few_calls_and_wakeups(
    backends: BackendFactory, kind: str
) -> None:
    queue = TaskQueue(backends.make())
    await queue.connect()
    # Processes this test did not start (servers of the session's own, say) are not measured.
    others = frozenset(process_tree(os.getpid())) - {os.getpid()}
    own = backends.make()
    calls = CallLog(own)
    worker = KINDS[kind](own, concurrency=2)
    try:
        await worker.start()
        task_id = await queue.enqueue(tasks.add, 1, 1)
        assert await queue.get_value(task_id, timeout=30) == 2  # the worker is up and idle now
        calls.clear()
        seconds, cpu, wakeups = await measure_idle(lambda: process_tree(os.getpid(), others))
        made = dict(calls.counts())
    finally:
        await worker.stop()
        await queue.close()
        if own.connected:
            await own.close()
    what = f"a {kind} worker on {backends.name}"
    print(f"{what}: backend calls {made}")
    assert sum(made.values()) <= CALLS_PER_SECOND * seconds, (
        f"{what} made these backend calls in {seconds:.1f} s while idle: {made}"
    )
    check_idle(what, seconds, cpu, wakeups)
