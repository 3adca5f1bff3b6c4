"""docs/types.md: the id an enqueue returns is a ``TaskId``, a ``str``, that every call taking an
id accepts, on every backend, and that is stored and read back as the plain string it is."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from sitq import AsyncWorker, SyncTaskQueue, TaskId, TaskQueue, TaskStatus
from sitq.models import CancelOutcome, ClaimRef, LeaseState, RequeueOutcome
from sitq.testing import SyncTestQueue
from tests.conformance import tasks
from tests.conftest import BackendFactory


def kind_of(value: object) -> str:
    """The exact type of what the task received."""
    return type(value).__name__


async def test_every_enqueue_returns_a_task_id(queue: TaskQueue) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    ids = [
        await queue.enqueue(tasks.add, 1, 2),
        await queue.enqueue_at(later, tasks.add, 1, 2),
        await queue.enqueue_in(3600, tasks.async_add, 1, 2),
        await queue.options(priority=3).enqueue(tasks.add, 1, 2),
        await queue.options(priority=3).enqueue_at(later, tasks.add, 1, 2),
        await queue.options(priority=3).enqueue_in(timedelta(hours=1), tasks.add, 1, 2),
    ]
    assert all(type(task_id) is TaskId for task_id in ids)
    many = await queue.enqueue_many([(tasks.add, (1, 2))] * 3)
    assert all(type(task_id) is str for task_id in many)
    listed = (await queue.list_tasks(status="pending", limit=100)).tasks
    assert {info.task_id for info in listed} == {*ids, *many}
    assert all(type(info.task_id) is str for info in listed)


async def test_every_call_taking_an_id_accepts_a_task_id(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(tasks.add, 2, 3)
    assert await queue.get_status(task_id) is TaskStatus.PENDING
    info = await queue.get_task(task_id)
    assert info is not None and info.task_id == task_id and type(info.task_id) is str
    async with AsyncWorker(queue.backend, poll_interval=0.1):
        assert await queue.get_value(task_id, timeout=30) == 5
    result = await queue.get_result(task_id, timeout=1)
    assert result is not None and type(result.task_id) is str

    later = await queue.enqueue_in(3600, tasks.add, 1, 1)
    assert await queue.cancel(later) is True
    assert await queue.requeue(later) is True
    assert await queue.get_status(later) is TaskStatus.PENDING


async def test_the_backend_s_own_calls_accept_a_task_id(queue: TaskQueue) -> None:
    """Callers that hand an id from enqueue to the backend directly, as some do."""
    backend = queue.backend
    task_id = await queue.enqueue(tasks.add, 1, 1)
    snap = await backend.get_task(task_id)
    assert snap is not None and snap.task_id == task_id
    assert await backend.wait_for_result(task_id, 0.01) is not None
    (claim,) = await backend.claim(["default"], 1, "worker-1", 60.0)
    assert claim.task_id == task_id and type(claim.task_id) is str
    ref = ClaimRef(task_id, claim.fencing_token)
    assert await backend.extend_lease([ref], 60.0) == [LeaseState.HELD]
    assert await backend.cancel(task_id, time.time()) is CancelOutcome.REQUESTED
    assert await backend.extend_lease([ref], 60.0) == [LeaseState.CANCEL_REQUESTED]

    pending = await queue.enqueue_in(3600, tasks.add, 1, 1)
    assert await backend.cancel(pending, time.time()) is CancelOutcome.CANCELLED
    assert await backend.requeue([pending], time.time()) == [RequeueOutcome.REQUEUED]


async def test_a_task_id_given_back_as_an_explicit_id_is_stored_as_plain_text(
    queue: TaskQueue,
) -> None:
    first = await queue.enqueue(tasks.add, 1, 1)
    again: TaskId[int] = TaskId(f"{first}-again")
    task_id = await queue.options(task_id=again).enqueue(tasks.add, 2, 2)
    assert task_id == again and type(task_id) is TaskId
    # Idempotent as with any explicit id: the second enqueue finds it.
    assert await queue.options(task_id=again).enqueue(tasks.add, 2, 2) == again
    info = await queue.get_task(task_id)
    assert info is not None and type(info.task_id) is str
    page = await queue.list_tasks(status="pending")
    assert sorted(i.task_id for i in page.tasks) == sorted([first, again])
    assert all(type(i.task_id) is str for i in page.tasks)


async def test_a_task_id_passed_to_a_task_arrives_as_a_plain_str(queue: TaskQueue) -> None:
    first = await queue.enqueue(tasks.add, 1, 1)
    follow_up = await queue.enqueue(kind_of, first)
    async with AsyncWorker(queue.backend, poll_interval=0.1):
        assert await queue.get_value(follow_up, timeout=30) == "str"


def test_the_sync_wrapper_returns_the_same_ids(backends: BackendFactory) -> None:
    # A memory store has its sync face in sitq.testing (SyncTaskQueue refuses one).
    sync = SyncTestQueue() if backends.name == "memory" else SyncTaskQueue(backends.make())
    with sync as queue:
        now = queue.enqueue(tasks.add, 1, 2)
        later = queue.enqueue_at(datetime.now(UTC) + timedelta(hours=1), tasks.add, 1, 2)
        view = queue.options(priority=2)
        delayed = view.enqueue_in(3600, tasks.async_add, 1, 2)
        assert all(type(i) is TaskId for i in (now, later, delayed, view.enqueue(tasks.add, 1, 2)))
        assert all(type(i) is str for i in queue.enqueue_many([(tasks.add, (1, 2))]))
        assert queue.get_status(delayed) is TaskStatus.PENDING
        assert queue.cancel(later) is True and queue.requeue(later) is True
        info = queue.get_task(later)
        assert info is not None and type(info.task_id) is str
        with pytest.raises(TimeoutError):
            queue.get_value(now, timeout=0.01)
