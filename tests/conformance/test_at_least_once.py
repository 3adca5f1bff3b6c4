"""SPEC §2.2: leases bring back the tasks of lost workers; max_deliveries ends the loop."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from sitq import (
    AsyncWorker,
    ProcessWorker,
    TaskQueue,
    TaskStatus,
    ThreadWorker,
)
from sitq.worker import Worker
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until

KINDS: list[type[Worker]] = [AsyncWorker, ThreadWorker, ProcessWorker]


async def test_worker_killed_mid_task_task_completes_elsewhere(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    assert shared_backends.url is not None
    task_id = await shared_queue.enqueue(tasks.block_first_time, str(tmp_path), "k")
    first = worker_processes.start(shared_backends.url, lease=1.0)
    marker = tmp_path / "k.first"
    await wait_until(marker.exists, message="the first worker to start the task")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    worker_processes.start(shared_backends.url, lease=5.0)
    result = await shared_queue.get_result(task_id, timeout=20)
    assert result is not None
    assert result.status == TaskStatus.SUCCESS
    assert result.attempts == 2
    assert shared_queue.serializer.loads(result.value or b"") != f"done by {first.pid}"


async def test_task_that_keeps_killing_its_worker_is_failed(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
) -> None:
    assert shared_backends.url is not None
    task_id = await shared_queue.options(max_deliveries=2).enqueue(tasks.kill_own_process)
    for _ in range(2):
        proc = worker_processes.start(shared_backends.url, lease=0.5)
        await wait_until(lambda p=proc: p.poll() is not None, message="the worker to be killed")
        assert proc.returncode == -signal.SIGKILL
    worker_processes.start(shared_backends.url, lease=5.0)
    result = await shared_queue.get_result(task_id, timeout=20)
    assert result is not None
    assert result.status == TaskStatus.FAILED
    assert result.error is not None
    assert "max_deliveries=2" in result.error
    assert "started 2 times" in result.error


async def test_lease_is_renewed_while_a_long_task_runs(queue: TaskQueue) -> None:
    """A task running for several lease periods is not taken over (the heartbeat renews it)."""
    from sitq import AsyncWorker

    task_id = await queue.enqueue(tasks.sleep_async, 3.0)
    async with AsyncWorker(queue.backend, lease=1.0, poll_interval=0.1) as worker:
        assert await queue.get_value(task_id, timeout=15) == "slept"
    result = await queue.get_result(task_id)
    assert result is not None and result.attempts == 1
    assert worker.counters["lost"] == 0
