"""docs/contract.md, Sync wrapper: SyncTaskQueue blocks, and works where an event loop already
runs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitq import AsyncWorker, SitqError, SyncTaskQueue, TaskQueue, TaskStatus
from tests.conformance import tasks


def test_sync_queue_round_trip(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    with SyncTaskQueue(backend=url) as queue:
        task_id = queue.enqueue(tasks.add, 5, 10)
        later = queue.options(priority=3).enqueue_in(3600, tasks.add, 1, 1)
        many = queue.enqueue_many([(tasks.add, (1, 2))])
        assert queue.get_status(task_id) == TaskStatus.PENDING
        assert queue.cancel(later) is True

    async def work() -> None:
        async with TaskQueue(url) as q, AsyncWorker(q.backend, poll_interval=0.2):
            await q.get_result(many[0], timeout=10)
            await q.get_result(task_id, timeout=10)

    asyncio.run(work())
    with SyncTaskQueue(backend=url) as queue:
        assert queue.get_value(task_id) == 15
        result = queue.get_result(later)
        assert result is not None and result.status == TaskStatus.CANCELLED
        assert [s.queue for s in queue.stats()] == ["default"]
    with pytest.raises(SitqError, match="closed"):
        queue.enqueue(tasks.add, 1, 1)


async def test_sync_queue_inside_a_running_loop(tmp_path: Path) -> None:
    """Called from a coroutine (as in a notebook), it still works: its loop is its own."""
    with SyncTaskQueue(backend=f"sqlite:///{tmp_path / 'q.db'}") as queue:
        task_id = queue.enqueue(tasks.add, 2, 2)
        assert queue.get_status(task_id) == TaskStatus.PENDING


def test_the_operators_calls_through_the_sync_wrapper(tmp_path: Path) -> None:
    with SyncTaskQueue(f"sqlite:///{tmp_path / 'q.db'}") as queue:
        later = datetime.now(UTC) + timedelta(hours=1)
        task_id = queue.enqueue_at(later, tasks.add, 1, 2)
        info = queue.get_task(task_id)
        assert info is not None and info.function == "tests.conformance.tasks.add"
        page = queue.list_tasks(status="pending")
        assert [i.task_id for i in page.tasks] == [task_id] and page.next_cursor is None
        assert queue.cancel(task_id)
        assert queue.requeue(task_id) is True
        assert queue.get_status(task_id) is TaskStatus.PENDING
        assert queue.requeue_many("cancelled") == 0
        assert queue.purge("default", "pending") == 1
        assert queue.list_workers() == []
