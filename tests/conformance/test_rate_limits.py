"""docs/contract.md, Rate limits: at most N tasks with one rate key start per period across all
workers; a task over the limit waits without holding a worker slot or the tasks behind it. And
the two backend steps rate limits are built on: ``acquire_any_lock`` and a ``Release`` with a
delay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sitq import AsyncWorker, TaskQueue, TaskStatus
from sitq.backends.base import Backend
from sitq.models import Release
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until


def most_in_a_window(starts: list[float], period: float) -> int:
    """The most start times that fall within one window of ``period`` seconds (half-open:
    two starts share a window when they are less than ``period`` apart)."""
    ordered = sorted(starts)
    first = best = 0
    for last, start in enumerate(ordered):
        while start - ordered[first] >= period:
            first += 1
        best = max(best, last - first + 1)
    return best


# -- the backend steps ---------------------------------------------------------------------


@pytest.fixture
async def others(backends: BackendFactory) -> AsyncIterator[list[Backend]]:
    """Four more connected backend objects on the same store (other clients)."""
    made = [backends.make() for _ in range(4)]
    for backend in made:
        if not backend.connected:
            await backend.connect()
    yield made
    if backends.shared:
        for backend in made:
            await backend.close()


async def test_acquire_any_lock_takes_the_first_free_lock(queue: TaskQueue) -> None:
    backend = queue.backend
    names = ["slots:0", "slots:1", "slots:2"]
    assert await backend.acquire_lock("slots:0", "someone", 30) is True
    assert await backend.acquire_any_lock(names, "t1", 0.6) == ("slots:1", 0.0)
    assert await backend.acquire_any_lock(names, "t2", 0.6) == ("slots:2", 0.0)
    began = time.monotonic()
    taken, wait = await backend.acquire_any_lock(names, "t3", 0.6)
    assert taken is None
    assert 0.0 < wait <= 0.6 + 0.05, "the wait is until the first held lock frees"

    # Every lock but slots:0 (held for 30 s) frees after its TTL, no sooner than said.
    async def taken_again() -> bool:
        return (await backend.acquire_any_lock(names, "t4", 30))[0] == "slots:1"

    await wait_until(
        taken_again,
        timeout=10,
        interval=0.05,
        message="a lock of the set to free after its TTL",
    )
    assert time.monotonic() - began >= wait - 0.05
    # The lock taken by acquire_any_lock is an ordinary lock: its token can release it.
    assert await backend.release_lock("slots:1", "t4") is True


async def test_racing_clients_each_take_a_different_lock(
    queue: TaskQueue, others: list[Backend]
) -> None:
    names = [f"race:{i}" for i in range(3)]
    clients = [queue.backend, *others]
    got = await asyncio.gather(
        *(c.acquire_any_lock(names, f"token-{i}", 30) for i, c in enumerate(clients))
    )
    taken = [name for name, _ in got if name is not None]
    assert sorted(taken) == names, "each free lock went to exactly one client"
    assert all(wait > 25 for name, wait in got if name is None)


async def test_a_delayed_release_is_due_after_its_delay_and_not_charged(
    queue: TaskQueue,
) -> None:
    backend = queue.backend
    task_id = await queue.enqueue(tasks.add, 1, 2)
    (claim,) = await backend.claim(["default"], 1, "w", 30)
    released_at = time.monotonic()
    assert await backend.settle([Release(claim.ref, delay=0.8)]) == [True]
    snap = await backend.get_task(task_id)
    assert snap is not None and snap.status is TaskStatus.PENDING and snap.attempts == 0
    assert await backend.claim(["default"], 1, "w", 30) == [], "not due before its delay"
    again: list[object] = []

    async def claimed() -> bool:
        again.extend(await backend.claim(["default"], 1, "w", 30))
        return bool(again)

    await wait_until(claimed, timeout=10, interval=0.05, message="the task to come due")
    assert time.monotonic() - released_at >= 0.75
    assert again[0].attempts == 1  # type: ignore[attr-defined]


# -- the engine, in one process on every backend --------------------------------------------


async def test_a_rate_limited_key_leaves_the_worker_free(queue: TaskQueue, tmp_path: Path) -> None:
    limited = queue.options(rate_limit="5/s", rate_key="api.example.com")
    keyed = await limited.enqueue_many([(tasks.record, (str(tmp_path), "api")) for _ in range(10)])
    plain = await queue.enqueue_many([(tasks.record, (str(tmp_path), "plain")) for _ in range(5)])
    async with AsyncWorker(queue.backend, concurrency=1, poll_interval=0.5):
        for task_id in [*plain, *keyed]:
            result = await queue.get_result(task_id, timeout=30)
            assert result is not None and result.status is TaskStatus.SUCCESS
    api = [r["start"] for r in tasks.executions(tmp_path, "api")]
    plain_ends = [r["end"] for r in tasks.executions(tmp_path, "plain")]
    assert len(api) == 10 and len(plain_ends) == 5
    assert most_in_a_window(api, 1.0) <= 5
    assert max(api) - min(api) >= 0.95, "the second five waited for the first slot to free"
    # One worker slot: the waiting keyed tasks did not keep the plain ones out of it.
    assert max(plain_ends) < max(api) - 0.5
    snap = await queue.get_task(keyed[-1])
    assert snap is not None and snap.attempts == 1, "waiting for a slot is not an attempt"


# -- the engine, across worker processes ----------------------------------------------------


async def test_three_worker_processes_start_at_most_the_rate(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    assert shared_backends.url is not None
    # One worker of each kind, one slot each: the slot is taken in the worker's own process
    # whatever runs the task, and a task waiting for the rate holds none of them.
    procs = [
        worker_processes.start(
            shared_backends.url, kind=kind, concurrency=1, extra=("--log-level", "INFO")
        )
        for kind in ("async", "thread", "process")
    ]
    await wait_until(
        lambda: all(" started on " in worker_processes.output(p) for p in procs),
        timeout=60,
        message="the three workers to start",
    )
    log = str(tmp_path)
    api = shared_queue.options(rate_limit="20/s", rate_key="api.example.com")
    other = shared_queue.options(rate_limit="20/s", rate_key="other.example.com")
    ids = await api.enqueue_many([(tasks.record, (log, "api")) for _ in range(60)])
    ids += await other.enqueue_many([(tasks.record, (log, "other")) for _ in range(10)])
    ids += await shared_queue.enqueue_many([(tasks.record, (log, "plain")) for _ in range(20)])
    for task_id in ids:
        result = await shared_queue.get_result(task_id, timeout=120)
        assert result is not None and result.status is TaskStatus.SUCCESS
    runs = tasks.executions(tmp_path, "api")
    starts = [r["start"] for r in runs]
    assert len(starts) == 60, "each task ran once"
    # Start times as the tasks saw them: never more than 20 in any one second, and spread
    # over it, one per 1/20 s at most, so 60 starts span at least 59 gaps (2.95 s).
    assert most_in_a_window(starts, 1.0) <= 20
    assert max(starts) - min(starts) >= 2.5
    assert len({r["pid"] for r in runs}) >= 2, "the work was shared between workers"
    # The other key and the plain tasks, enqueued behind the 60, were not held back.
    done = [r["end"] for label in ("other", "plain") for r in tasks.executions(tmp_path, label)]
    assert len(done) == 30
    assert max(done) < max(starts) - 1.0
