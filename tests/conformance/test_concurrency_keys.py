"""docs/contract.md, Concurrency keys: at most N tasks with one key run at once across all
workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from sitq import AsyncWorker, ConfigurationError, FixedBackoff, RetryPolicy, TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until


def _max_overlap(runs: list[dict[str, float]]) -> int:
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


async def test_three_workers_never_run_more_than_the_limit(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    assert shared_backends.url is not None
    keyed = shared_queue.options(concurrency_key="tenant-7", concurrency_limit=3)
    # Every worker is up before the tasks come, so that all three compete for the key's slots
    # (a worker that started 2 s after the others would find the work done).
    procs = [
        worker_processes.start(shared_backends.url, concurrency=4, extra=("--log-level", "INFO"))
        for _ in range(3)
    ]
    await wait_until(
        lambda: all(" started on " in worker_processes.output(p) for p in procs),
        timeout=60,
        message="the three workers to start",
    )
    ids = await keyed.enqueue_many(
        [(tasks.record, (str(tmp_path), "keyed", 0.1)) for _ in range(30)]
    )
    for task_id in ids:
        result = await shared_queue.get_result(task_id, timeout=120)
        assert result is not None and result.status is TaskStatus.SUCCESS
    runs = tasks.executions(tmp_path, "keyed")
    assert len(runs) == 30, "each task ran once"
    assert _max_overlap(runs) <= 3
    assert len({r["pid"] for r in runs}) >= 2, "the work was shared between workers"


async def test_other_tasks_run_while_a_key_is_full(queue: TaskQueue, tmp_path: Path) -> None:
    keyed = queue.options(concurrency_key="slow", concurrency_limit=1, priority=5)
    keyed_ids = [
        await keyed.enqueue(tasks.async_record, str(tmp_path), "slow", 0.3) for _ in range(10)
    ]
    plain_ids = [await queue.enqueue(tasks.add, i, i) for i in range(5)]
    async with AsyncWorker(queue.backend, concurrency=4):
        for task_id in plain_ids:
            assert await queue.get_result(task_id, timeout=30) is not None
        finished = [await queue.get_status(t) for t in keyed_ids]
        assert finished.count(TaskStatus.SUCCESS) < 10, "plain tasks waited behind the key"
        for task_id in keyed_ids:
            assert await queue.get_result(task_id, timeout=60) is not None
    runs = tasks.executions(tmp_path, "slow")
    assert len(runs) == 10 and _max_overlap(runs) == 1


async def test_a_key_frees_when_its_tasks_fail_or_retry(queue: TaskQueue, tmp_path: Path) -> None:
    keyed = queue.options(concurrency_key="k", concurrency_limit=1)
    failing = await keyed.enqueue(tasks.fail, "boom")
    retried = await keyed.options(
        retry=RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.05))
    ).enqueue(tasks.flaky, str(tmp_path), "flaky", 1)
    last = await keyed.enqueue(tasks.add, 1, 1)
    async with AsyncWorker(queue.backend, concurrency=4):
        assert await queue.get_value(last, timeout=30) == 2
        assert (await queue.get_result(failing, timeout=30)).status is TaskStatus.FAILED  # type: ignore[union-attr]
        assert await queue.get_value(retried, timeout=30) is not None


async def test_bad_concurrency_options_fail_at_enqueue(queue: TaskQueue) -> None:
    with pytest.raises(ConfigurationError, match="together"):
        await queue.options(concurrency_key="k").enqueue(tasks.add, 1, 1)
    with pytest.raises(ConfigurationError, match="concurrency_limit"):
        await queue.options(concurrency_key="k", concurrency_limit=0).enqueue(tasks.add, 1, 1)
    with pytest.raises(ConfigurationError, match="concurrency_key"):
        await queue.options(concurrency_key="", concurrency_limit=1).enqueue(tasks.add, 1, 1)
