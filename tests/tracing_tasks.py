"""Tasks for tests/integration/test_tracing.py: tasks that enqueue another (so that its run
shows whether the trace goes on), from async code, a thread and a worker process."""

from __future__ import annotations

from sitq import SyncTaskQueue, TaskQueue


def leaf() -> str:
    return "leaf"


async def enqueue_leaf_async(url: str, queue: str) -> str:
    """Enqueue :func:`leaf` on ``queue`` from async code; its id."""
    async with TaskQueue(url) as tasks:
        return await tasks.options(queue=queue).enqueue(leaf)


def enqueue_leaf_sync(url: str, queue: str) -> str:
    """Enqueue :func:`leaf` on ``queue`` from plain code (a thread or a worker process); its id."""
    with SyncTaskQueue(url) as tasks:
        return tasks.options(queue=queue).enqueue(leaf)
