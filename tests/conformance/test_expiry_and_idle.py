"""SPEC §2.5 and §2.7: results expire; an idle worker costs close to no CPU."""

from __future__ import annotations

import time
from pathlib import Path

from sitq import AsyncWorker, TaskQueue
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until


async def test_results_expire_and_are_purged(queue: TaskQueue) -> None:
    view = queue.options(result_ttl=0.5, task_id="short-lived")
    task_id = await view.enqueue(tasks.add, 1, 1)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        assert await queue.get_value(task_id, timeout=10) == 2
    await wait_until(lambda: _gone(queue, task_id), timeout=5, message="the result to expire")
    assert await queue.backend.purge_expired(time.time()) in (0, 1)
    # The id can be used again once its result has expired.
    assert await view.enqueue(tasks.add, 2, 2) == task_id
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        assert await queue.get_value(task_id, timeout=10) == 4


async def test_purge_removes_expired_rows(queue: TaskQueue) -> None:
    ids = await queue.options(result_ttl=0.2).enqueue_many([(tasks.add, (i, i)) for i in range(5)])
    keep = await queue.enqueue(tasks.add, 9, 9)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        for i in [*ids, keep]:
            await queue.get_result(i, timeout=10)
    removed = 0

    async def purged_all() -> bool:
        nonlocal removed
        removed += await queue.backend.purge_expired(time.time())
        return removed == 5

    await wait_until(purged_all, timeout=5, message="five expired results purged")
    assert await queue.get_value(keep) == 18


async def _gone(queue: TaskQueue, task_id: str) -> bool:
    return await queue.get_status(task_id) is None


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_idle_worker_uses_almost_no_cpu(
    shared_backends: BackendFactory, worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    assert shared_backends.url is not None
    queue = TaskQueue(shared_backends.make())
    await queue.connect()
    try:
        proc = worker_processes.start(shared_backends.url)
        task_id = await queue.enqueue(tasks.add, 1, 1)
        assert await queue.get_value(task_id, timeout=20) == 2  # the worker is up and idle now
        before = _cpu_seconds(proc.pid)
        window = 3.0
        time.sleep(window)  # measuring an interval, not waiting for an outcome
        used = _cpu_seconds(proc.pid) - before
        assert used < 0.05 * window, f"idle worker used {used:.2f} s CPU in {window} s"
    finally:
        await queue.close()
