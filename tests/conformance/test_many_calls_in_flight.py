"""docs/contract.md, Public API: every call of a ``TaskQueue`` may be awaited concurrently.
Thousands of calls in flight on one queue object wait their turn for the backend's connections; none
fails."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from sitq import AsyncWorker, TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conftest import BackendFactory

IN_FLIGHT = 3000
T = TypeVar("T")


async def _all(calls: list[Awaitable[T]], what: str) -> list[T]:
    """Await every call at once; fail naming how many raised and the first error."""
    replies: list[Any] = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in replies if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} of {len(calls)} {what} failed, first: {errors[0]!r}"
    return replies


async def test_thousands_of_calls_in_flight_on_one_queue(queue: TaskQueue) -> None:
    ids = await _all([queue.enqueue(tasks.async_add, i, 1) for i in range(IN_FLIGHT)], "enqueues")
    assert len(set(ids)) == IN_FLIGHT
    stats = {s.queue: s for s in await queue.stats()}
    assert stats["default"].pending == IN_FLIGHT, "every enqueue stored its task"
    statuses = await _all([queue.get_status(i) for i in ids], "get_status calls")
    assert statuses == [TaskStatus.PENDING] * IN_FLIGHT
    # Half of them cancelled at once, and every result read at once.
    cancelled, kept = ids[::2], ids[1::2]
    assert await _all([queue.cancel(i) for i in cancelled], "cancels") == [True] * len(cancelled)
    results = await _all([queue.get_result(i) for i in ids], "get_result calls")
    assert [r is not None and r.status for r in results[::2]] == [TaskStatus.CANCELLED] * len(
        cancelled
    )
    assert results[1::2] == [None] * len(kept)


async def test_thousands_of_result_waiters_on_one_queue(backends: BackendFactory) -> None:
    """Ten waiters on each of 300 tasks, all waiting while a worker drains the queue."""
    queue = TaskQueue(backends.make())
    await queue.connect()
    try:
        ids = await _all([queue.enqueue(tasks.async_add, i, 1) for i in range(300)], "enqueues")
        waiting = ids * (IN_FLIGHT // len(ids))
        waiters = asyncio.ensure_future(
            _all([queue.get_value(i, timeout=60) for i in waiting], "get_value waits")
        )
        async with AsyncWorker(backends.make(), concurrency=20, poll_interval=0.2):
            values = await waiters
        assert values == [ids.index(i) + 1 for i in waiting]
    finally:
        await queue.close()
