"""docs/contract.md, Exactly one result: fencing tokens; only the current claim records an
outcome."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sitq import TaskQueue, TaskStatus
from sitq.models import ClaimRef, Finish, LeaseState
from tests.conformance import tasks
from tests.conformance.processes import process_tree
from tests.conftest import BackendFactory, WorkerProcesses, wait_until


async def test_stale_claim_cannot_overwrite_the_result(queue: TaskQueue) -> None:
    """A claim whose lease was taken over can neither settle nor extend its lease (a stale
    claim sent while the new one still runs: test_backend_steps.py)."""
    backend = queue.backend
    task_id = await queue.enqueue(tasks.add, 1, 2)
    (slow,) = await backend.claim(["default"], 1, "slow-worker", lease=1.0)
    assert await backend.claim(["default"], 1, "other", lease=1.0) == []
    taken: list = []

    async def take_over() -> bool:
        taken.extend(await backend.claim(["default"], 1, "fast-worker", lease=30))
        return bool(taken)

    await wait_until(take_over, message="the expired lease to be claimed again")
    (fast,) = taken
    assert fast.task_id == task_id
    assert fast.fencing_token != slow.fencing_token
    assert fast.attempts == 2
    now = time.time()
    slow_ref = ClaimRef(task_id, slow.fencing_token)
    fast_ref = ClaimRef(task_id, fast.fencing_token)
    assert await backend.extend_lease([slow_ref], 30) == [LeaseState.LOST]
    fast_done = Finish(
        fast_ref, TaskStatus.SUCCESS, queue.serializer.dumps("fast"), None, None, now, now + 60
    )
    slow_done = Finish(
        slow_ref, TaskStatus.SUCCESS, queue.serializer.dumps("slow"), None, None, now, now + 60
    )
    assert await backend.settle([fast_done]) == [True]
    assert await backend.settle([slow_done]) == [False]
    assert await backend.settle([fast_done]) == [False]
    assert await queue.get_value(task_id) == "fast"


async def test_paused_worker_result_is_refused(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
) -> None:
    """A worker frozen (SIGSTOP) past its lease loses the task; when it resumes, its result is
    refused and the task keeps the result of the worker that took over."""
    assert shared_backends.url is not None
    await _paused_worker(shared_queue, shared_backends.url, worker_processes, "async")


@pytest.mark.parametrize("kind", ["thread", "process"])
async def test_paused_worker_result_is_refused_under_other_kinds(
    worker_processes: WorkerProcesses, tmp_path: Path, kind: str
) -> None:
    """The same with a thread or a process worker (frozen with its pool processes), on SQLite
    (the backend's part is the same whatever the kind; the case above runs on every backend)."""
    url = f"sqlite:///{tmp_path / 'sitq.db'}"
    async with TaskQueue(url) as queue:
        await _paused_worker(queue, url, worker_processes, kind)


async def _paused_worker(
    queue: TaskQueue, url: str, worker_processes: WorkerProcesses, kind: str
) -> None:
    task_id = await queue.enqueue(tasks.sleep_then_pid, 1.0)
    frozen = worker_processes.start(url, kind=kind, concurrency=1, lease=1.0)
    await wait_until(
        lambda: _status(queue, task_id, TaskStatus.RUNNING), message="the task to start"
    )
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        frozen_pids = process_tree(frozen.pid)
        other = worker_processes.start(url, kind=kind, concurrency=1, lease=5.0)
        try:
            value = await queue.get_value(task_id, timeout=20)
        except TimeoutError:
            snapshot = await queue.backend.get_task(task_id)
            raise AssertionError(
                f"the task did not finish: {snapshot!r}\n"
                f"frozen worker:\n{worker_processes.output(frozen)}\n"
                f"other worker:\n{worker_processes.output(other)}"
            ) from None
        assert value not in frozen_pids
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    await wait_until(
        lambda: (
            "refused" in worker_processes.output(frozen)
            or "lost" in worker_processes.output(frozen)
        ),
        message="the resumed worker to find its claim gone",
    )
    assert await queue.get_value(task_id) == value
    result = await queue.get_result(task_id)
    assert result is not None and result.attempts == 2


async def _status(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status
