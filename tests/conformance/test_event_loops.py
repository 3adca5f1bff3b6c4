"""docs/contract.md, Queue: one TaskQueue serves successive event loops (two ``asyncio.run``
calls in one program), reconnecting on the new loop, on every backend."""

from __future__ import annotations

import asyncio

from sitq import AsyncWorker, TaskQueue
from tests.conformance import tasks
from tests.conftest import BackendFactory


def test_one_queue_across_two_event_loops(backends: BackendFactory) -> None:
    queue = TaskQueue(backends.make())

    async def enqueue() -> str:
        await queue.connect()
        return await queue.enqueue(tasks.add, 20, 22)

    async def run_it(task_id: str) -> object:
        async with AsyncWorker(queue.backend, poll_interval=0.1):
            return await queue.get_value(task_id, timeout=20)

    async def read(task_id: str) -> object:
        try:
            return await queue.get_value(task_id)
        finally:
            await queue.close()

    task_id = asyncio.run(enqueue())
    assert asyncio.run(run_it(task_id)) == 42
    assert asyncio.run(read(task_id)) == 42
