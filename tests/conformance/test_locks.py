"""docs/contract.md, Locks: one holder at a time across processes, owner tokens, TTL, extension."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path

import pytest

from sitq import ConfigurationError, LockTimeout, SitqError, SyncTaskQueue, TaskQueue
from tests.conftest import BackendFactory, WorkerProcesses, wait_until


def _holds(path: Path) -> list[tuple[int, float, float]]:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return sorted((int(pid), float(start), float(end)) for pid, start, end in rows)


async def test_two_processes_increment_a_counter_under_one_lock(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    assert shared_backends.url is not None
    counter = tmp_path / "counter"
    procs = [
        worker_processes.call(
            "tests.conformance.tasks:increment_under_lock",
            shared_backends.url,
            str(counter),
            "50",
            face,
        )
        for face in ("async", "sync")
    ]
    for proc in procs:
        code = await asyncio.to_thread(proc.wait, 120)
        assert code == 0, worker_processes.output(proc)
    assert counter.read_text() == "100"
    holds = _holds(counter.with_suffix(".holds"))
    assert len(holds) == 100 and len({pid for pid, _, _ in holds}) == 2
    by_start = sorted(holds, key=lambda h: h[1])
    for (_, _, end), (_, next_start, _) in itertools.pairwise(by_start):
        assert next_start >= end, "two holders overlapped"


async def test_a_killed_holders_lock_frees_itself_after_its_ttl(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    assert shared_backends.url is not None
    marker = tmp_path / "holding"
    holder = worker_processes.call(
        "tests.conformance.tasks:hold_lock_until_killed",
        shared_backends.url,
        "dead-man",
        "2",
        str(marker),
    )
    await wait_until(marker.exists, timeout=60, message="the other process to take the lock")
    with pytest.raises(LockTimeout):
        async with shared_queue.lock("dead-man", timeout=0):
            pass
    os.killpg(holder.pid, signal.SIGKILL)
    await asyncio.to_thread(holder.wait, 30)
    async with shared_queue.lock("dead-man", ttl=5, timeout=30) as lock:
        assert lock.held


async def test_lock_timeout_names_the_lock(queue: TaskQueue) -> None:
    async with queue.lock("busy", ttl=30):
        with pytest.raises(LockTimeout, match="busy") as caught:
            async with queue.lock("busy", timeout=0.3):
                pass
        assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, SitqError)
    async with queue.lock("busy", timeout=0):
        pass


async def test_a_held_lock_is_extended_past_its_ttl(queue: TaskQueue) -> None:
    # The holder extends every ttl / 3 = 0.5 s, so a stall of up to 1 s (a loaded CI machine)
    # does not lose the lock; the work lasts over two TTLs, so it outlives two extensions.
    ttl = 1.5
    async with queue.lock("long", ttl=ttl) as lock:
        held_until = time.monotonic() + 2.1 * ttl
        while time.monotonic() < held_until:
            await asyncio.sleep(0.5)  # the work done under the lock
            assert await queue.backend.acquire_lock("long", "intruder", 30) is False
        assert lock.held
    assert await queue.backend.acquire_lock("long", "next", 30) is True


async def test_releasing_does_not_free_someone_elses_lock(queue: TaskQueue) -> None:
    lock = queue.lock("shared", ttl=0.3)
    await lock.acquire()
    assert lock._keeper is not None
    lock._keeper.cancel()  # a holder frozen past its TTL
    await wait_until(
        lambda: queue.backend.acquire_lock("shared", "newcomer", 30),
        timeout=10,
        message="the lapsed lock to be taken",
    )
    await lock.release()
    assert await queue.backend.acquire_lock("shared", "third", 30) is False


async def test_bad_lock_arguments_fail_at_once(queue: TaskQueue) -> None:
    with pytest.raises(ConfigurationError, match="lock name"):
        queue.lock("")
    with pytest.raises(ConfigurationError, match="ttl"):
        queue.lock("x", ttl=0)
    with pytest.raises(ConfigurationError, match="timeout"):
        queue.lock("x", timeout=-1)


def test_sync_queue_lock_is_a_blocking_context_manager(shared_backends: BackendFactory) -> None:
    with SyncTaskQueue(shared_backends.make()) as sq:
        with sq.lock("sync", ttl=5) as lock:
            assert lock.held
            with pytest.raises(LockTimeout):
                sq.lock("sync", timeout=0).acquire()
        with sq.lock("sync", timeout=0):
            pass
