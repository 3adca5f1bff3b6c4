"""docs/operating.md, Acting on tasks: requeue, requeue_many, purge and failure_ttl."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitq import AsyncWorker, ConfigurationError, TaskNotFound, TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conftest import wait_until


async def _finished(queue: TaskQueue, task_id: str) -> TaskStatus:
    result = await queue.get_result(task_id, timeout=30)
    assert result is not None, f"task {task_id} did not finish"
    return result.status


async def test_requeue_failed_and_cancelled_tasks_run_again(
    queue: TaskQueue, tmp_path: Path
) -> None:
    flaky = await queue.enqueue(tasks.flaky, str(tmp_path), "f", 1)  # fails the first time
    later = datetime.now(UTC) + timedelta(hours=1)
    cancelled = await queue.enqueue_at(later, tasks.add, 2, 3)
    assert await queue.cancel(cancelled)
    async with AsyncWorker(queue.backend, poll_interval=0.1):
        assert await _finished(queue, flaky) is TaskStatus.FAILED
        failed = await queue.get_task(flaky)
        assert failed is not None and failed.attempts == 1
        assert await queue.requeue(flaky) is True
        assert await queue.requeue(cancelled) is True
        assert await queue.get_value(flaky, timeout=30) == 2  # its second run ever
        assert await queue.get_value(cancelled, timeout=30) == 5
    info = await queue.get_task(flaky)
    assert info is not None and info.status is TaskStatus.SUCCESS and info.attempts == 1
    assert info.error is None


async def test_requeue_refuses_pending_running_and_succeeded(
    queue: TaskQueue, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    done = await queue.enqueue(tasks.add, 1, 1)
    async with AsyncWorker(queue.backend, concurrency=1, poll_interval=0.1):
        assert await queue.get_value(done, timeout=30) == 2
        running = await queue.enqueue(tasks.wait_for_file, str(release))
        await wait_until(
            lambda: _status(queue, running, TaskStatus.RUNNING), message="the task running"
        )
        pending = await queue.enqueue(tasks.add, 2, 2)
        for task_id in (done, running, pending):
            assert await queue.requeue(task_id) is False
        release.touch()
        assert await queue.get_value(running, timeout=30) == "released"
    with pytest.raises(TaskNotFound):
        await queue.requeue("no-such-task")


async def _status(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status


async def test_requeue_many(queue: TaskQueue) -> None:
    a = queue.options(queue="a")
    b = queue.options(queue="b")
    failing = [await a.enqueue(tasks.fail, "x") for _ in range(5)]
    other = [await b.enqueue(tasks.fail, "y") for _ in range(3)]
    async with AsyncWorker(queue.backend, queues=["a", "b"], poll_interval=0.1):
        for task_id in failing + other:
            assert await _finished(queue, task_id) is TaskStatus.FAILED
    assert await queue.requeue_many(queue="a") == 5
    assert {(await queue.get_status(i)) for i in failing} == {TaskStatus.PENDING}
    assert {(await queue.get_status(i)) for i in other} == {TaskStatus.FAILED}
    assert await queue.requeue_many() == 3
    assert await queue.requeue_many() == 0
    with pytest.raises(ConfigurationError, match="only failed or cancelled"):
        await queue.requeue_many(status="success")


async def test_purge_each_state_leaves_running_tasks(queue: TaskQueue, tmp_path: Path) -> None:
    release = tmp_path / "release"
    q = queue.options(queue="p")
    later = datetime.now(UTC) + timedelta(hours=1)
    succeeded = [await q.enqueue(tasks.add, 1, 1) for _ in range(3)]
    failed = [await q.enqueue(tasks.fail, "p") for _ in range(2)]
    running = await q.enqueue(tasks.wait_for_file, str(release))
    keep = await queue.options(queue="other").enqueue(tasks.add, 0, 0)
    async with AsyncWorker(queue.backend, concurrency=1, queues=["p"], poll_interval=0.1):
        for task_id in succeeded + failed:
            await _finished(queue, task_id)
        await wait_until(lambda: _status(queue, running, TaskStatus.RUNNING), message="running")
        pending = [await q.enqueue(tasks.add, 2, 2) for _ in range(4)]
        scheduled = await q.enqueue_at(later, tasks.add, 3, 3)
        cancelled = await q.enqueue_at(later, tasks.add, 4, 4)
        assert await queue.cancel(cancelled)
        assert await queue.purge("p", "pending") == 5
        for task_id in [*pending, scheduled]:
            assert await queue.get_task(task_id) is None
        assert await queue.purge("p", "failed") == 2
        assert await queue.purge("p", "cancelled") == 1
        assert await queue.purge("p", "success") == 3
        assert await queue.get_status(running) is TaskStatus.RUNNING
        release.touch()
        assert await queue.get_value(running, timeout=30) == "released"
    assert await queue.purge("p", "finished") == 1
    assert await queue.get_status(keep) is TaskStatus.PENDING
    for bad in ("running", "everything"):
        with pytest.raises(ConfigurationError, match="running tasks are never purged"):
            await queue.purge("p", bad)


@pytest.mark.parametrize("failure_ttl", ["default", 1.0, None])
async def test_failure_ttl(queue: TaskQueue, failure_ttl: float | str | None) -> None:
    view = queue if failure_ttl == "default" else queue.options(failure_ttl=failure_ttl)
    task_id = await view.options(result_ttl=1).enqueue(tasks.fail, "kept?")
    ok = await view.options(result_ttl=1).enqueue(tasks.add, 1, 1)
    async with AsyncWorker(queue.backend, poll_interval=0.1, purge_interval=0.2):
        assert await _finished(queue, task_id) is TaskStatus.FAILED
        assert await _finished(queue, ok) is TaskStatus.SUCCESS
        info = await queue.get_task(task_id)
        assert info is not None and info.finished_at is not None
        if failure_ttl == 1.0:
            await wait_until(
                lambda: _gone(queue, task_id), timeout=15, message="the failure expired"
            )
            return
        # The success expires after its result_ttl; the failure is still listed after that.
        await wait_until(lambda: _gone(queue, ok), timeout=15, message="the result expired")
        listed = (await queue.list_tasks(status="failed")).tasks
        assert [i.task_id for i in listed] == [task_id]
    # Kept for 7 days, or (None) with the latest expiry a backend stores: still readable.
    assert await queue.get_status(task_id) is TaskStatus.FAILED


async def _gone(queue: TaskQueue, task_id: str) -> bool:
    return await queue.get_task(task_id) is None
