"""``SyncTestQueue`` and ``drain(queue)`` without await: the blocking face, no thread of its
own, every task run in the caller's thread; and the plain ``SyncTaskQueue`` refusing a memory
store, pointing at it."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from sitq import (
    ConfigurationError,
    FixedBackoff,
    MemoryBackend,
    RetryPolicy,
    SitqError,
    SyncTaskQueue,
    TaskStatus,
)
from sitq.testing import FakeClock, SyncTestQueue, TestQueue, drain
from tests.testing import tasks

START = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)


def test_tasks_run_in_the_callers_thread_and_no_thread_is_started() -> None:
    threads = threading.active_count()
    with SyncTestQueue() as queue:
        assert isinstance(queue, SyncTaskQueue)
        assert threading.active_count() == threads, "SyncTestQueue started a thread"
        first = queue.enqueue(tasks.add, 1, 2)
        second = queue.enqueue(tasks.async_add, 3, 4)
        results = drain(queue)
        assert [(r.task_id, r.status) for r in results] == [
            (first, TaskStatus.SUCCESS),
            (second, TaskStatus.SUCCESS),
        ]
        assert queue.get_value(first) == 3 and queue.get_value(second) == 7
        assert [run["thread"] for run in tasks.RUNS] == [threading.get_ident()] * 2
        assert drain(queue) == []


def test_a_sync_task_can_enqueue_through_the_sync_queue_while_drained() -> None:
    with SyncTestQueue() as queue:
        tasks.QUEUE["q"] = queue
        queue.enqueue(tasks.sync_fan_out, 2)
        results = drain(queue)
        assert [queue.serializer.loads(r.value) for r in results if r.value] == [2, 100, 101]
        done = queue.enqueue(tasks.add, 20, 22)
        drain(queue)
        # Reading a finished task's value from inside a task needs no waiting: it works.
        reader = queue.enqueue(tasks.sync_reads, done, None)
        drain(queue)
        assert queue.get_value(reader) == 42


def test_a_call_from_a_drained_task_that_would_wait_is_refused_clearly() -> None:
    with SyncTestQueue() as queue:
        tasks.QUEUE["q"] = queue
        unfinished = queue.enqueue_in(60, tasks.add, 1, 1)
        reader = queue.enqueue(tasks.sync_reads, unfinished, 5)
        (result,) = drain(queue)
        assert result.task_id == reader and result.status is TaskStatus.FAILED
        assert result.error is not None and "would have to wait" in result.error


def test_the_clock_moves_etas_retries_and_cron_ticks() -> None:
    with SyncTestQueue(
        clock=FakeClock(START), retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(30))
    ) as queue:
        later = queue.enqueue_in(timedelta(minutes=10), tasks.add, 1, 1)
        tasks.FAILURES_LEFT["db"] = 1
        flaky = queue.enqueue(tasks.flaky, "db")
        queue.add_cron("hourly", "0 * * * *", tasks.add, (2, 2))
        assert drain(queue) == []
        queue.clock.advance(30)
        assert [r.task_id for r in drain(queue)] == [flaky]
        at_ten_past, at_one = drain(queue, advance=timedelta(hours=1))
        assert at_ten_past.task_id == later
        assert at_one.enqueued_at == datetime(2030, 1, 1, 1, tzinfo=UTC)
        assert queue.clock.now == START + timedelta(hours=1, seconds=30)


def test_sync_drain_is_refused_where_an_event_loop_runs() -> None:
    async def inside() -> None:
        with pytest.raises(ConfigurationError, match="await drain"):
            drain(queue)

    with SyncTestQueue() as queue:
        queue.enqueue(tasks.add, 1, 1)
        asyncio.run(inside())
        assert len(drain(queue)) == 1, "the refused drain lost the task"


async def test_calls_work_from_an_async_test_but_waiting_is_refused() -> None:
    """In an async test its calls run where the test's loop runs; none of them waits."""
    with SyncTestQueue() as queue:
        task_id = queue.enqueue(tasks.add, 1, 1)
        assert queue.get_status(task_id) is TaskStatus.PENDING
        with pytest.raises(SitqError, match="would have to wait"):
            queue.get_result(task_id, timeout=1)
        assert await drain(queue.async_queue) != []
        assert queue.get_value(task_id) == 2


def test_closed_queue_refuses_calls_and_close_is_idempotent() -> None:
    queue = SyncTestQueue()
    queue.enqueue(tasks.add, 1, 1)
    queue.close()
    queue.close()
    with pytest.raises(SitqError, match="closed"):
        queue.enqueue(tasks.add, 1, 1)
    with pytest.raises(SitqError, match="closed"):
        drain(queue)


def test_its_clock_is_that_of_its_async_queue() -> None:
    clock = FakeClock(START)
    with SyncTestQueue(clock=clock, queue="mail") as queue:
        assert queue.clock is clock and queue.async_queue.clock is clock
        assert isinstance(queue.async_queue, TestQueue)
        task_id = queue.enqueue(tasks.add, 1, 1)
        info = queue.get_task(task_id)
        assert info is not None and info.queue == "mail" and info.enqueued_at == START


@pytest.mark.parametrize("backend", ["memory://", MemoryBackend()], ids=["url", "object"])
def test_a_plain_sync_task_queue_refuses_a_memory_store_and_names_the_answer(
    backend: object,
) -> None:
    threads = threading.active_count()
    with pytest.raises(ConfigurationError) as raised:
        SyncTaskQueue(backend)  # type: ignore[arg-type]
    message = str(raised.value)
    assert "memory" in message and "sitq.testing.SyncTestQueue" in message
    assert "drain" in message
    assert threading.active_count() == threads, "the refused queue left its thread running"
