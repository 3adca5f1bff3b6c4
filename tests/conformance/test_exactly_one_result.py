"""SPEC §2.3: fencing tokens; only the current claim records an outcome."""

from __future__ import annotations

import os
import signal
import time

from sitq import (
    AsyncWorker,
    ProcessWorker,
    TaskQueue,
    TaskStatus,
    ThreadWorker,
)
from sitq.models import ClaimRef, Finish, LeaseState
from sitq.worker import Worker
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until

KINDS: list[type[Worker]] = [AsyncWorker, ThreadWorker, ProcessWorker]


async def test_stale_claim_cannot_overwrite_the_result(queue: TaskQueue) -> None:
    """A claim whose lease was taken over can neither settle nor extend its lease."""
    backend = queue.backend
    task_id = await queue.enqueue(tasks.add, 1, 2)
    (slow,) = await backend.claim(["default"], 1, "slow-worker", lease=0.2)
    assert await backend.claim(["default"], 1, "other", lease=0.2) == []
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
    task_id = await shared_queue.enqueue(tasks.sleep_then_pid, 1.0)
    frozen = worker_processes.start(shared_backends.url, lease=1.0)
    await wait_until(
        lambda: _status(shared_queue, task_id, TaskStatus.RUNNING), message="the task to start"
    )
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        worker_processes.start(shared_backends.url, lease=5.0)
        value = await shared_queue.get_value(task_id, timeout=20)
        assert value != frozen.pid
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    await wait_until(
        lambda: (
            "refused" in worker_processes.output(frozen)
            or "lost" in worker_processes.output(frozen)
        ),
        message="the resumed worker to find its claim gone",
    )
    assert await shared_queue.get_value(task_id) == value
    result = await shared_queue.get_result(task_id)
    assert result is not None and result.attempts == 2


async def _status(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status
