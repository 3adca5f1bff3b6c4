"""docs/contract.md, Order: higher priority first, then first in, first out (tasks enqueued with a
past ETA: test_eta_limits_and_order.py)."""

from __future__ import annotations

from pathlib import Path

from sitq import (
    AsyncWorker,
    TaskQueue,
)
from tests.conformance import tasks
from tests.conftest import wait_until


async def test_higher_priority_first_then_fifo(queue: TaskQueue, tmp_path: Path) -> None:
    labels = []
    for i, priority in enumerate([0, 5, 0, 9, 5, 0]):
        label = f"p{priority}-{i}"
        labels.append((priority, i, label))
        await queue.options(priority=priority).enqueue(tasks.record, str(tmp_path), "order", 0.0)
        await queue.options(priority=priority).enqueue(tasks.record, str(tmp_path), label)
    # One slot: the order of execution is the order of claims.
    async with AsyncWorker(queue.backend, concurrency=1, poll_interval=0.2):
        await wait_until(lambda: len(tasks.executions(tmp_path, "order")) == 6)
        await wait_until(lambda: all(tasks.executions(tmp_path, lb) for _, _, lb in labels))
    starts = {lb: tasks.executions(tmp_path, lb)[0]["start"] for _, _, lb in labels}
    expected = [lb for _, _, lb in sorted(labels, key=lambda t: (-t[0], t[1]))]
    assert sorted(starts, key=lambda lb: starts[lb]) == expected
