"""SPEC §2.5: an idle worker costs close to no CPU."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sitq import (
    AsyncWorker,
    ProcessWorker,
    TaskQueue,
    ThreadWorker,
)
from sitq.worker import Worker
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses

KINDS: list[type[Worker]] = [AsyncWorker, ThreadWorker, ProcessWorker]


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


def _cpu_seconds(pid: int) -> float:

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
