"""docs/contract.md, Durable enqueue: when enqueue returns, the task survives the client and every
worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sitq import (
    AsyncWorker,
    TaskQueue,
    TaskStatus,
)
from tests.conformance import tasks
from tests.conftest import REPO, BackendFactory


async def test_durable_across_close_and_a_new_client(backends: BackendFactory) -> None:
    """docs/contract.md, Durable enqueue: an enqueued task survives the client closing (for memory:
    the same object)."""
    first = TaskQueue(backends.make())
    await first.connect()
    task_id = await first.enqueue(tasks.add, 20, 22)
    await first.close()
    second = TaskQueue(backends.make())
    await second.connect()
    try:
        assert await second.get_status(task_id) == TaskStatus.PENDING
        async with AsyncWorker(second.backend, poll_interval=0.2):
            assert await second.get_value(task_id, timeout=10) == 42
    finally:
        await second.close()


async def test_enqueued_task_survives_the_client_being_killed(
    shared_backends: BackendFactory, tmp_path: Path
) -> None:
    """The enqueuing process is SIGKILLed right after enqueue returns; the task is there."""
    assert shared_backends.url is not None
    script = (
        "import asyncio, os, signal, sys\n"
        "from sitq import TaskQueue\n"
        "from tests.conformance import tasks\n"
        "async def main():\n"
        "    queue = TaskQueue(sys.argv[1])\n"
        "    task_id = await queue.enqueue(tasks.add, 40, 2)\n"
        "    print(task_id, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "asyncio.run(main())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-c", script, shared_backends.url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL
    task_id = done.stdout.strip()
    queue = TaskQueue(shared_backends.make())
    await queue.connect()
    try:
        assert await queue.get_status(task_id) == TaskStatus.PENDING
        async with AsyncWorker(queue.backend, poll_interval=0.2):
            assert await queue.get_value(task_id, timeout=10) == 42
    finally:
        await queue.close()
