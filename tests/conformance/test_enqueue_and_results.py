"""docs/contract.md, Queue: enqueueing, results, state and cancellation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sitq import (
    AsyncWorker,
    ConfigurationError,
    Result,
    SerializationError,
    TaskFailedError,
    TaskNotFound,
    TaskQueue,
    TaskStatus,
)
from tests.conformance import tasks
from tests.conftest import BackendFactory, wait_until


async def test_enqueue_returns_id_and_task_is_pending(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(tasks.add, 1, 2)
    assert isinstance(task_id, str) and task_id
    assert await queue.get_status(task_id) == TaskStatus.PENDING
    assert await queue.get_result(task_id) is None


async def test_result_of_a_finished_task(queue: TaskQueue) -> None:
    before = datetime.now(UTC)
    task_id = await queue.enqueue(tasks.add, 2, 3)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert isinstance(result, Result)
    assert result.status == "success" and str(result.status) == "success"
    assert f"{result.status}" == "success"
    assert result.value is not None and queue.serializer.loads(result.value) == 5
    assert result.error is None and result.attempts == 1
    assert result.enqueued_at is not None and result.started_at is not None
    assert result.finished_at is not None
    assert before <= result.enqueued_at <= result.started_at <= result.finished_at
    assert result.finished_at.tzinfo is not None
    assert await queue.get_status(task_id) == TaskStatus.SUCCESS
    assert await queue.get_value(task_id) == 5


async def test_failed_task_raises_with_remote_traceback(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(tasks.fail, "boom")
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status == TaskStatus.FAILED
    assert result.value is None
    assert result.error == "ValueError: boom"
    assert result.traceback and "in fail" in result.traceback
    with pytest.raises(TaskFailedError) as info:
        await queue.get_value(task_id)
    assert "boom" in str(info.value) and "in fail" in str(info.value)


async def test_get_value_times_out_and_unknown_ids_are_errors(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(tasks.add, 1, 1)
    with pytest.raises(TimeoutError):
        await queue.get_value(task_id, timeout=0.1)
    assert await queue.get_status("no-such-task") is None
    with pytest.raises(TaskNotFound):
        await queue.get_result("no-such-task")
    with pytest.raises(TaskNotFound):
        await queue.cancel("no-such-task")


async def test_get_result_waits_for_the_result(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(tasks.async_add, 4, 4)
    waiter = asyncio.create_task(queue.get_result(task_id, timeout=10))
    await asyncio.sleep(0)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await waiter
    assert result is not None and result.status == TaskStatus.SUCCESS


async def test_enqueue_many(queue: TaskQueue) -> None:
    ids = await queue.enqueue_many(
        [(tasks.add, (i, i)) for i in range(50)] + [(tasks.add, (1,), {"y": 9})]
    )
    assert len(ids) == len(set(ids)) == 51
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        values = [await queue.get_value(i, timeout=10) for i in ids]
    assert values == [i + i for i in range(50)] + [10]


async def test_explicit_task_id_makes_enqueue_idempotent(queue: TaskQueue) -> None:
    view = queue.options(task_id="order-42")
    assert await view.enqueue(tasks.add, 1, 1) == "order-42"
    assert await view.enqueue(tasks.add, 100, 100) == "order-42"
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        assert await queue.get_value("order-42", timeout=10) == 2
    # Finished with its result kept: still a no-op.
    assert await view.enqueue(tasks.add, 5, 5) == "order-42"
    assert await queue.get_value("order-42") == 2


async def test_options_do_not_clash_with_task_kwargs(queue: TaskQueue) -> None:
    def takes_options(timeout: int, priority: int, queue: str) -> str:
        return f"{timeout}-{priority}-{queue}"

    task_id = await queue.options(timeout=10).enqueue(
        takes_options, timeout=1, priority=2, queue="q"
    )
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        assert await queue.get_value(task_id, timeout=10) == "1-2-q"


async def test_bad_input_fails_at_enqueue(queue: TaskQueue) -> None:
    import socket

    with pytest.raises(ConfigurationError, match="cannot take these arguments"):
        await queue.enqueue(tasks.add, 1)
    with pytest.raises(ConfigurationError, match="callable"):
        await queue.enqueue("not a function")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="priority"):
        queue.options(priority="high")
    with pytest.raises(ConfigurationError, match="unknown task option"):
        queue.options(retries=3)
    with pytest.raises(ConfigurationError, match="queue"):
        queue.options(queue="has space")
    with pytest.raises(ConfigurationError, match="timeout"):
        queue.options(timeout=-1)
    with socket.socket() as sock:
        with pytest.raises(SerializationError, match="positional argument 0"):
            await queue.enqueue(tasks.record, sock, "x")
    stats = await queue.stats()
    assert sum(s.pending for s in stats) == 0


async def test_queues_are_separate(queue: TaskQueue) -> None:
    other = await queue.options(queue="emails").enqueue(tasks.add, 1, 2)
    default = await queue.enqueue(tasks.add, 3, 4)
    async with AsyncWorker(queue.backend, queues=["emails"], poll_interval=0.2):
        assert await queue.get_value(other, timeout=10) == 3
        assert await queue.get_status(default) == TaskStatus.PENDING
    stats = {s.queue: s for s in await queue.stats()}
    assert stats["emails"].succeeded == 1 and stats["default"].pending == 1


async def test_cancel_pending_and_running(queue: TaskQueue, tmp_path: Path) -> None:
    pending = await queue.enqueue_in(60, tasks.add, 1, 1)
    assert await queue.cancel(pending) is True
    result = await queue.get_result(pending)
    assert result is not None and result.status == TaskStatus.CANCELLED
    assert await queue.cancel(pending) is False
    running = await queue.enqueue(tasks.sleep_async, 60)
    # The worker learns of the cancellation at its next heartbeat (every lease / 3 = 2 s); a
    # lease of 6 s is not lost to a stall of a loaded machine meanwhile.
    async with AsyncWorker(queue.backend, lease=6.0, poll_interval=0.2):
        await wait_until(lambda: _status_is(queue, running, TaskStatus.RUNNING), message="running")
        assert await queue.cancel(running) is True
        result = await queue.get_result(running, timeout=20)
    assert result is not None and result.status == TaskStatus.CANCELLED


async def _status_is(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status


async def test_tasks_are_found_by_id_from_another_client(backends: BackendFactory) -> None:
    """A client that did not enqueue a task knows it by its id alone: one at a time, in a
    batch, on a queue other than the default, and with an explicit id."""
    async with TaskQueue(backends.make()) as producer:
        await producer.enqueue(tasks.add, 0, 0)  # the queue is known: the short path follows
        one = await producer.enqueue(tasks.add, 1, 1)
        many = await producer.enqueue_many([(tasks.add, (2, 2)), (tasks.add, (3, 3))])
        elsewhere = await producer.options(queue="emails").enqueue(tasks.add, 4, 4)
        named = await producer.options(task_id="named-task").enqueue(tasks.add, 5, 5)
        later = await producer.enqueue_in(60, tasks.add, 6, 6)
    async with TaskQueue(backends.make()) as other:
        for task_id in (one, *many, elsewhere, named, later):
            assert await other.get_status(task_id) == TaskStatus.PENDING, task_id
        assert await other.cancel(later) is True
        async with AsyncWorker(other.backend, queues=["default", "emails"], poll_interval=0.2):
            assert await other.get_value(one, timeout=10) == 2
            assert [await other.get_value(t, timeout=10) for t in many] == [4, 6]
            assert await other.get_value(elsewhere, timeout=10) == 8
            assert await other.get_value(named, timeout=10) == 10
    async with TaskQueue(backends.make()) as third:
        assert await third.get_status(later) == TaskStatus.CANCELLED
        assert await third.get_status(one) == TaskStatus.SUCCESS
