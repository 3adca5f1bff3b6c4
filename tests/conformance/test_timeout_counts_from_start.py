"""docs/contract.md, Timeouts: ``timeout`` bounds one attempt from the moment it starts running.

A thread cannot be stopped, so a sync task that runs past its timeout is recorded as timed out
while its thread goes on. That thread keeps its worker slot until it returns: the next task is
claimed only then, and its own timeout starts only when it starts. A process task's process is
killed, which frees its slot at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sitq import AsyncWorker, ProcessWorker, TaskQueue, TaskStatus, ThreadWorker
from sitq.worker import Worker
from tests.conformance import tasks

KINDS: list[type[Worker]] = [AsyncWorker, ThreadWorker, ProcessWorker]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
async def test_timeout_counts_from_start(
    queue: TaskQueue, kind: type[Worker], tmp_path: Path
) -> None:
    log_dir = str(tmp_path)
    # A runs well past its timeout in a sync function; B is quick, but waits behind A.
    slow = await queue.options(timeout=0.3, priority=1).enqueue(tasks.record, log_dir, "a", 2.0)
    quick = await queue.options(timeout=0.5).enqueue(tasks.record, log_dir, "b")
    async with kind(queue.backend, concurrency=1, poll_interval=0.2, shutdown_timeout=5):
        first = await queue.get_result(slow, timeout=15)
        second = await queue.get_result(quick, timeout=15)

    assert first is not None and first.status == TaskStatus.FAILED
    assert first.error == "TimeoutError: task exceeded its timeout of 0.3 s"
    assert second is not None, "the quick task never finished"
    assert second.status == TaskStatus.SUCCESS, (
        f"the quick task failed without having run long: {second.error}"
    )
    assert len(tasks.executions(log_dir, "b")) == 1
    (b_run,) = tasks.executions(log_dir, "b")
    if kind is ProcessWorker:
        # Its process was killed at the timeout: the slow task never got to log its end.
        assert tasks.executions(log_dir, "a") == []
    else:
        # The timed-out thread kept the only slot until it returned; B started after that.
        a_runs = tasks.executions(log_dir, "a")
        assert len(a_runs) == 1, "the quick task ran while the timed-out thread still ran"
        assert b_run["start"] >= a_runs[0]["end"]
