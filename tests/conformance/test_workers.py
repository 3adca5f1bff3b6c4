"""docs/contract.md, Workers: the three worker kinds, shutdown, and processes that die."""

from __future__ import annotations

import pytest

from sitq import (
    AsyncWorker,
    ProcessWorker,
    TaskQueue,
    TaskStatus,
    ThreadWorker,
)
from sitq.worker import Worker
from tests.conformance import tasks
from tests.conftest import wait_until

KINDS: list[type[Worker]] = [AsyncWorker, ThreadWorker, ProcessWorker]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
async def test_every_kind_runs_sync_and_async_functions(
    queue: TaskQueue, kind: type[Worker]
) -> None:
    ids = [
        await queue.enqueue(tasks.add, 1, 2),
        await queue.enqueue(tasks.async_add, 3, 4),
        await queue.enqueue(lambda: "lambda"),
    ]
    async with kind(queue.backend, concurrency=2, poll_interval=0.2):
        values = [await queue.get_value(i, timeout=20) for i in ids]
    assert values == [3, 7, "lambda"]


async def test_stop_releases_unfinished_tasks_without_charging(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(tasks.sleep_async, 60)
    worker = AsyncWorker(queue.backend, shutdown_timeout=0.2, poll_interval=0.2)
    await worker.start()
    await wait_until(lambda: _status_is(queue, task_id, TaskStatus.RUNNING), message="running")
    await worker.stop()
    assert await queue.get_status(task_id) == TaskStatus.PENDING
    snap = await queue.backend.get_task(task_id)
    assert snap is not None and snap.attempts == 0


async def test_stop_waits_for_running_tasks(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(tasks.sleep_async, 0.5)
    worker = AsyncWorker(queue.backend, shutdown_timeout=10, poll_interval=0.2)
    await worker.start()
    await wait_until(lambda: _status_is(queue, task_id, TaskStatus.RUNNING), message="running")
    await worker.stop()
    assert await queue.get_value(task_id) == "slept"


async def test_process_that_dies_fails_only_its_task(queue: TaskQueue) -> None:
    dead = await queue.enqueue(tasks.always_exit, 3)
    killed = await queue.enqueue(tasks.kill_own_process)
    fine = await queue.enqueue(tasks.add, 2, 2)
    async with ProcessWorker(queue.backend, concurrency=1, poll_interval=0.2):
        dead_result = await queue.get_result(dead, timeout=20)
        killed_result = await queue.get_result(killed, timeout=20)
        assert await queue.get_value(fine, timeout=20) == 4
    assert dead_result is not None and dead_result.status == TaskStatus.FAILED
    assert "exit" in (dead_result.error or "") and "3" in (dead_result.error or "")
    assert killed_result is not None and "SIGKILL" in (killed_result.error or "")


async def _status_is(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status
