"""docs/operating.md, Inside a task: current_task() and set_progress in every worker kind."""

from __future__ import annotations

from pathlib import Path

import pytest

import sitq
from sitq import AsyncWorker, ProcessWorker, SitqError, TaskQueue, TaskStatus, ThreadWorker
from sitq.worker import Worker
from tests.conformance import tasks
from tests.conftest import wait_until

CASES = [
    (AsyncWorker, tasks.async_report_progress),
    (AsyncWorker, tasks.report_progress),  # a plain function, in a thread
    (ThreadWorker, tasks.report_progress),
    (ThreadWorker, tasks.async_report_progress),
    (ProcessWorker, tasks.report_progress),
    (ProcessWorker, tasks.async_report_progress),
]


@pytest.mark.parametrize(
    ("kind", "func"), CASES, ids=[f"{k.__name__}-{f.__name__}" for k, f in CASES]
)
async def test_progress_is_seen_while_the_task_runs(
    queue: TaskQueue, tmp_path: Path, kind: type[Worker], func: object
) -> None:
    release = tmp_path / "release"
    task_id = await queue.options(queue="ctx").enqueue(func, str(release))  # type: ignore[arg-type]
    async with kind(queue.backend, concurrency=1, queues=["ctx"], poll_interval=0.1) as worker:

        async def progress_seen() -> bool:
            info = await queue.get_task(task_id)
            return info is not None and info.progress == 0.4

        await wait_until(progress_seen, timeout=20, message="the progress")
        info = await queue.get_task(task_id)
        assert info is not None and info.status is TaskStatus.RUNNING
        assert info.progress_message == "resized 40 of 100 images"
        assert info.worker_id == worker.worker_id
        listed = (await queue.list_tasks(status="running", queue="ctx")).tasks
        assert [(i.task_id, i.progress) for i in listed] == [(task_id, 0.4)]
        release.touch()
        seen = await queue.get_value(task_id, timeout=30)
    assert seen == {
        "task_id": task_id,
        "queue": "ctx",
        "attempt": 1,
        "function": f"tests.conformance.tasks.{func.__name__}",  # type: ignore[attr-defined]
        "worker_id": worker.worker_id,
    }
    done = await queue.get_task(task_id)
    assert done is not None and done.progress is None and done.worker_id is None


def test_current_task_outside_a_task_is_an_error() -> None:
    with pytest.raises(SitqError, match="outside a running task"):
        sitq.current_task()
