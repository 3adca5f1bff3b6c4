"""docs/contract.md, Retries, Timeouts and Scheduling: retries, timeouts and scheduling."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitq import (
    AsyncWorker,
    FixedBackoff,
    ProcessWorker,
    RetryPolicy,
    TaskQueue,
    TaskStatus,
    ThreadWorker,
)
from sitq.worker import Worker
from tests.conformance import tasks

KINDS: list[type[Worker]] = [AsyncWorker, ThreadWorker, ProcessWorker]


async def test_retry_policy_retries_until_success(queue: TaskQueue, tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.05))
    task_id = await queue.options(retry=policy).enqueue(tasks.flaky, str(tmp_path), "f", 2)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status == TaskStatus.SUCCESS
    assert queue.serializer.loads(result.value or b"") == 3
    assert result.attempts == 3


async def test_retry_policy_gives_up_after_max_attempts(queue: TaskQueue, tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=2, backoff=FixedBackoff(0.05))
    task_id = await queue.options(retry=policy).enqueue(tasks.flaky, str(tmp_path), "g", 5)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status == TaskStatus.FAILED
    assert result.attempts == 2 and result.error == "ConnectionError: attempt 2 fails"


async def test_retry_on_limits_what_is_retried(queue: TaskQueue) -> None:
    policy = RetryPolicy(max_attempts=5, backoff=FixedBackoff(0.01), retry_on=(KeyError,))
    task_id = await queue.options(retry=policy).enqueue(tasks.raise_custom)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status == TaskStatus.FAILED and result.attempts == 1
    policy = RetryPolicy(max_attempts=2, backoff=FixedBackoff(0.01), retry_on=(tasks.CustomError,))
    task_id = await queue.options(retry=policy).enqueue(tasks.raise_custom)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.attempts == 2


async def test_task_raising_retry_runs_again(queue: TaskQueue, tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=4, retry_on=())
    task_id = await queue.options(retry=policy).enqueue(tasks.retry_me, str(tmp_path), "r", 2)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        assert await queue.get_value(task_id, timeout=10) == 3


async def test_retry_without_policy_fails(queue: TaskQueue, tmp_path: Path) -> None:
    task_id = await queue.enqueue(tasks.retry_me, str(tmp_path), "r", 2)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status == TaskStatus.FAILED
    assert result.error and result.error.startswith("Retry")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
async def test_timeout_fails_the_attempt(queue: TaskQueue, kind: type[Worker]) -> None:
    func = tasks.sleep_async if kind is AsyncWorker else tasks.sleep_sync
    task_id = await queue.options(timeout=0.3).enqueue(func, 30)
    ok_id = await queue.enqueue(tasks.add, 1, 2)
    async with kind(queue.backend, concurrency=2, poll_interval=0.2, shutdown_timeout=1):
        result = await queue.get_result(task_id, timeout=15)
        assert await queue.get_value(ok_id, timeout=15) == 3
    assert result is not None and result.status == TaskStatus.FAILED
    assert result.error is not None and result.error.startswith("TimeoutError")


async def test_timeout_is_retried_as_timeout_error(queue: TaskQueue) -> None:
    policy = RetryPolicy(max_attempts=2, backoff=FixedBackoff(0.01), retry_on=(TimeoutError,))
    task_id = await queue.options(timeout=0.2, retry=policy).enqueue(tasks.sleep_async, 30)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status == TaskStatus.FAILED and result.attempts == 2


async def test_enqueue_in_and_at_do_not_start_early(queue: TaskQueue, tmp_path: Path) -> None:
    start = time.time()
    later = await queue.enqueue_in(0.8, tasks.record, str(tmp_path), "later")
    at = await queue.enqueue_at(
        datetime.now(UTC) + timedelta(seconds=0.8), tasks.record, str(tmp_path), "at"
    )
    naive = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=0.8)
    at_naive = await queue.enqueue_at(naive, tasks.record, str(tmp_path), "naive")
    assert await queue.get_status(later) == TaskStatus.PENDING
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        for task_id in (later, at, at_naive):
            assert await queue.get_result(task_id, timeout=10) is not None
    for label in ("later", "at", "naive"):
        (run,) = tasks.executions(tmp_path, label)
        assert run["start"] >= start + 0.75, label
