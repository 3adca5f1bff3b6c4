"""docs/contract.md, Results expire: results are kept for result_ttl, then removed."""

from __future__ import annotations

import time

from sitq import (
    AsyncWorker,
    TaskQueue,
)
from tests.conformance import tasks
from tests.conftest import wait_until

#: Short, so that the tests see results expire, yet long enough to read each one first.
RESULT_TTL = 2.0


async def test_results_expire_and_are_purged(queue: TaskQueue) -> None:
    # The result is read once before it expires: its TTL leaves a loaded machine time for that.
    view = queue.options(result_ttl=RESULT_TTL, task_id="short-lived")
    task_id = await view.enqueue(tasks.add, 1, 1)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        assert await queue.get_value(task_id, timeout=10) == 2
    await wait_until(lambda: _gone(queue, task_id), timeout=15, message="the result to expire")
    assert await queue.backend.purge_expired(time.time()) in (0, 1)
    # The id can be used again once its result has expired.
    assert await view.enqueue(tasks.add, 2, 2) == task_id
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        assert await queue.get_value(task_id, timeout=10) == 4


async def test_purge_removes_expired_rows(queue: TaskQueue) -> None:
    ids = await queue.options(result_ttl=RESULT_TTL).enqueue_many(
        [(tasks.add, (i, i)) for i in range(5)]
    )
    keep = await queue.enqueue(tasks.add, 9, 9)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        for i in [*ids, keep]:
            await queue.get_result(i, timeout=10)
    removed = 0

    async def purged_all() -> bool:
        nonlocal removed
        removed += await queue.backend.purge_expired(time.time())
        return removed == 5

    await wait_until(purged_all, timeout=15, message="five expired results purged")
    assert await queue.get_value(keep) == 18


async def _gone(queue: TaskQueue, task_id: str) -> bool:
    return await queue.get_status(task_id) is None
