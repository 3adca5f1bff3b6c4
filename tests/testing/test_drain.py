"""``await drain(queue)`` on a ``TestQueue``: the due tasks run in the test's own thread and
event loop until none is left, and their results come back in the order they finished."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest

from sitq import (
    ConfigurationError,
    ExponentialBackoff,
    FixedBackoff,
    Result,
    RetryPolicy,
    TaskQueue,
    TaskStatus,
)
from sitq.testing import DrainLimitError, FakeClock, TestQueue, drain
from tests.testing import tasks

START = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)


def values(queue: TaskQueue, results: list[Result]) -> list[object]:
    return [queue.serializer.loads(r.value) if r.value is not None else None for r in results]


def names() -> list[str]:
    return [run["name"] for run in tasks.RUNS]


async def test_tasks_run_in_the_tests_own_thread_and_event_loop() -> None:
    queue = TestQueue()
    first = await queue.enqueue(tasks.add, 1, 2)
    second = await queue.enqueue(tasks.async_add, 3, 4)
    assert names() == [], "a task ran before drain"
    results = await drain(queue)
    assert [r.task_id for r in results] == [first, second]
    assert all(type(r) is Result and r.status is TaskStatus.SUCCESS for r in results)
    assert values(queue, results) == [3, 7]
    assert await queue.get_value(first) == 3 and await queue.get_value(second) == 7
    loop = asyncio.get_running_loop()
    assert [(run["thread"], run["loop"]) for run in tasks.RUNS] == [
        (threading.get_ident(), loop),
        (threading.get_ident(), loop),
    ]
    assert await drain(queue) == [], "a task ran twice"


async def test_the_results_are_the_finished_tasks_in_the_order_they_finished() -> None:
    queue = TestQueue(clock=FakeClock(START))
    failing = await queue.enqueue(tasks.fail, "no luck")
    later = await queue.enqueue_in(60, tasks.add, 1, 1)
    cancelled = await queue.enqueue(tasks.add, 2, 2)
    assert await queue.cancel(cancelled)
    urgent = await queue.options(priority=5).enqueue(tasks.add, 5, 5)
    results = await drain(queue)
    assert [(r.task_id, r.status) for r in results] == [
        (urgent, TaskStatus.SUCCESS),
        (failing, TaskStatus.FAILED),
    ]
    failed = results[1]
    assert failed.value is None and failed.error == "ValueError: no luck"
    assert failed.traceback is not None and "no luck" in failed.traceback
    assert failed.attempts == 1 and failed.finished_at == START
    assert await queue.get_status(later) is TaskStatus.PENDING
    assert await queue.get_status(cancelled) is TaskStatus.CANCELLED
    assert names() == ["add", "fail"]


async def test_tasks_that_tasks_enqueue_run_in_the_same_drain() -> None:
    queue = TestQueue()
    tasks.QUEUE["q"] = queue
    parent = await queue.enqueue(tasks.fan_out, 3)
    results = await drain(queue)
    assert results[0].task_id == parent
    assert values(queue, results) == [3, 0, 2, 4]
    assert names() == ["fan_out", "add", "add", "add"]


async def test_a_retry_due_at_once_runs_in_the_same_drain() -> None:
    queue = TestQueue(retry=RetryPolicy(max_attempts=3, backoff=FixedBackoff(0)))
    tasks.FAILURES_LEFT["db"] = 2
    task_id = await queue.enqueue(tasks.flaky, "db")
    (result,) = await drain(queue)
    assert (result.task_id, result.status, result.attempts) == (task_id, TaskStatus.SUCCESS, 3)
    assert [run["attempt"] for run in tasks.RUNS] == [1, 2, 3]


async def test_a_retry_waits_for_its_backoff_on_the_clock() -> None:
    queue = TestQueue(
        clock=FakeClock(START), retry=RetryPolicy(max_attempts=3, backoff=FixedBackoff(30))
    )
    tasks.FAILURES_LEFT["db"] = 1
    task_id = await queue.enqueue(tasks.flaky, "db")
    assert await drain(queue) == []
    assert await queue.get_status(task_id) is TaskStatus.PENDING
    queue.clock.advance(29.5)
    assert await drain(queue) == [], "the retry ran before its backoff had passed"
    queue.clock.advance(0.5)
    (result,) = await drain(queue)
    assert result.status is TaskStatus.SUCCESS and result.attempts == 2
    assert result.started_at == START + timedelta(seconds=30)


async def test_drain_with_advance_lets_time_pass_through_each_backoff() -> None:
    backoff = ExponentialBackoff(initial=10, factor=2, jitter=False)
    queue = TestQueue(clock=FakeClock(START), retry=RetryPolicy(max_attempts=4, backoff=backoff))
    tasks.FAILURES_LEFT["api"] = 3
    await queue.enqueue(tasks.flaky, "api")
    (result,) = await drain(queue, advance=timedelta(hours=1))
    assert result.status is TaskStatus.SUCCESS and result.attempts == 4
    # Attempts at 0, 10, 10 + 20 and 10 + 20 + 40 seconds; the clock ends an hour on.
    assert result.finished_at == START + timedelta(seconds=70)
    assert queue.clock.now == START + timedelta(hours=1)


async def test_a_task_asking_for_a_retry_later_waits_for_the_clock() -> None:
    queue = TestQueue(clock=FakeClock(START), retry=RetryPolicy(max_attempts=2))
    await queue.enqueue(tasks.retry_in, 45)
    assert await drain(queue) == []
    queue.clock.advance(44)
    assert await drain(queue) == []
    queue.clock.advance(1)
    (result,) = await drain(queue)
    assert values(queue, [result]) == ["second time"] and result.attempts == 2


async def test_etas_come_due_when_the_clock_reaches_them() -> None:
    queue = TestQueue(clock=FakeClock(START))
    in_a_minute = await queue.enqueue_in(60, tasks.add, 1, 1)
    at_nine = await queue.enqueue_at(datetime(2030, 1, 1, 9), tasks.add, 2, 2)
    in_a_day = await queue.enqueue_in(timedelta(days=1), tasks.add, 3, 3)
    assert await drain(queue) == []
    queue.clock.advance(59)
    assert await drain(queue) == []
    queue.clock.advance(1)
    assert [r.task_id for r in await drain(queue)] == [in_a_minute]
    queue.clock.advance_to(datetime(2030, 1, 1, 9))
    (result,) = await drain(queue)
    assert result.task_id == at_nine and result.started_at == datetime(2030, 1, 1, 9, tzinfo=UTC)
    assert [r.task_id for r in await drain(queue, advance=timedelta(days=1))] == [in_a_day]


async def test_cron_ticks_fire_when_the_clock_passes_them() -> None:
    queue = TestQueue(clock=FakeClock(START))
    await queue.add_cron("every-minute", "* * * * *", tasks.add, (1, 2))
    assert await drain(queue) == [], "a tick before the schedule was added ran"
    queue.clock.advance(30)  # 00:01:00, the first tick
    (first,) = await drain(queue)
    assert first.enqueued_at == datetime(2030, 1, 1, 0, 1, tzinfo=UTC)
    assert values(queue, [first]) == [3]
    # A jump over three ticks is time when no worker ran: the last missed tick runs once.
    queue.clock.advance(180)
    (caught_up,) = await drain(queue)
    assert caught_up.enqueued_at == datetime(2030, 1, 1, 0, 4, tzinfo=UTC)
    # Draining while time passes runs every tick, each at its time.
    ticks = await drain(queue, advance=timedelta(minutes=3))
    assert [r.enqueued_at for r in ticks] == [
        datetime(2030, 1, 1, 0, minute, tzinfo=UTC) for minute in (5, 6, 7)
    ]
    assert queue.clock.now == datetime(2030, 1, 1, 0, 7, tzinfo=UTC)
    assert len(tasks.RUNS) == 5


async def test_the_limit_stops_a_drain_that_would_not_end() -> None:
    queue = TestQueue()
    tasks.QUEUE["q"] = queue
    await queue.enqueue(tasks.forever, 0)
    with pytest.raises(DrainLimitError, match="limit of 5 tasks") as raised:
        await drain(queue, limit=5)
    assert raised.value.limit == 5
    assert values(queue, raised.value.results) == [0, 1, 2, 3, 4]
    assert [run["depth"] for run in tasks.RUNS] == [0, 1, 2, 3, 4], "it ran past its limit"
    # The task it did not run is left pending, as if never started, for the next drain.
    (waiting,) = (await queue.list_tasks("pending")).tasks
    assert waiting.attempts == 0
    with pytest.raises(DrainLimitError):
        await drain(queue, limit=1)
    assert [run["depth"] for run in tasks.RUNS][-1] == 5


async def test_a_limit_reached_with_nothing_left_is_no_error() -> None:
    queue = TestQueue()
    for i in range(3):
        await queue.enqueue(tasks.add, i, i)
    assert len(await drain(queue, limit=3)) == 3


async def test_queues_limits_the_drain_to_those_queues() -> None:
    queue = TestQueue()
    mail = await queue.options(queue="mail").enqueue(tasks.add, 1, 1)
    report = await queue.options(queue="reports").enqueue(tasks.add, 2, 2)
    assert [r.task_id for r in await drain(queue, queues=["mail"])] == [mail]
    assert [r.task_id for r in await drain(queue, queues="reports")] == [report]


async def test_cancelling_a_drain_gives_the_running_task_back() -> None:
    queue = TestQueue()
    tasks.STARTED["event"] = started = asyncio.Event()
    task_id = await queue.enqueue(tasks.waits_forever)
    draining = asyncio.create_task(drain(queue))
    await asyncio.wait_for(started.wait(), 10)
    draining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await draining
    info = await queue.get_task(task_id)
    assert info is not None and info.status is TaskStatus.PENDING and info.attempts == 0


async def test_timeouts_hold_for_async_and_sync_tasks() -> None:
    queue = TestQueue()
    await queue.options(timeout=0.05).enqueue(tasks.sleeps, 30)
    await queue.options(timeout=0.01).enqueue(tasks.blocks, 0.05)
    results = await drain(queue)
    assert [r.status for r in results] == [TaskStatus.FAILED, TaskStatus.FAILED]
    assert all(r.error is not None and "timeout" in r.error for r in results), results
    assert names() == ["sleeps", "blocks"]


async def test_a_test_queue_is_a_task_queue_on_its_own_clock() -> None:
    clock = FakeClock(START)
    queue = TestQueue(clock=clock, queue="emails", priority=3)
    assert isinstance(queue, TaskQueue) and queue.clock is clock
    task_id = await queue.enqueue(tasks.add, 1, 1)
    info = await queue.get_task(task_id)
    assert info is not None and info.queue == "emails" and info.priority == 3
    assert info.enqueued_at == START
    (stats,) = await queue.stats()
    assert (stats.queue, stats.pending) == ("emails", 1)
    assert TestQueue().clock is not TestQueue().clock, "two queues share a clock"
    with pytest.raises(ConfigurationError, match="FakeClock"):
        TestQueue(clock=lambda: 0.0)  # type: ignore[arg-type]


async def test_drain_refuses_bad_arguments() -> None:
    queue = TestQueue()
    with pytest.raises(ConfigurationError, match="TestQueue or SyncTestQueue"):
        drain(TaskQueue("memory://"))  # type: ignore[call-overload]
    for limit in (0, -1, True, 2.5):
        with pytest.raises(ConfigurationError, match="limit"):
            drain(queue, limit=limit)  # type: ignore[arg-type]
    for advance in (-1, float("inf"), "60"):
        with pytest.raises(ConfigurationError, match="advance"):
            drain(queue, advance=advance)  # type: ignore[arg-type]
    for queues in ([], [""], ["has space"]):
        with pytest.raises(ConfigurationError, match="queue"):
            drain(queue, queues=queues)
