"""docs/operating.md, Logs: a real ``sitq worker`` logs one line per task outcome, as text
and as JSON, with the task's id, function, queue, attempt and duration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sitq import RetryPolicy, TaskQueue, TaskStatus
from sitq.retry import FixedBackoff
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, wait_until


async def _status(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'logs.db'}"


async def _every_outcome(
    url: str, tmp_path: Path, workers: WorkerProcesses, log_format: str
) -> tuple[str, dict[str, str]]:
    """Run tasks that end every way through one logging worker; its output, and the ids."""
    logging_worker = workers.start(
        url,
        concurrency=4,
        lease=1.0,
        queues=("logs",),
        extra=("--log-level", "debug", "--log-format", log_format),
    )
    ids: dict[str, str] = {}
    async with TaskQueue(url) as queue:
        q = queue.options(queue="logs")
        ids["succeeded"] = await q.enqueue(tasks.add, 1, 2)
        ids["failed"] = await q.enqueue(tasks.fail, "boom")
        ids["retrying"] = await q.options(
            retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(0.1))
        ).enqueue(tasks.flaky, str(tmp_path), "flaky", 1)
        ids["timed_out"] = await q.options(timeout=0.2).enqueue(tasks.sleep_async, 30)
        ids["cancelled"] = await q.enqueue(tasks.sleep_async, 30)
        for name in ("succeeded", "failed", "retrying", "timed_out"):
            assert await queue.get_result(ids[name], timeout=30) is not None, name
        await wait_until(
            lambda: _status(queue, ids["cancelled"], TaskStatus.RUNNING), message="running"
        )
        assert await queue.cancel(ids["cancelled"])
        assert await queue.get_result(ids["cancelled"], timeout=30) is not None
        # Lost and refused: the task blocks the logging worker's loop past its 1 s lease, and
        # a second worker with a long lease takes it over meanwhile.
        ids["lost"] = await q.enqueue(tasks.block_loop, 3.0, 2.0)
        ids["refused"] = await q.enqueue(tasks.block_loop, 3.0)
        await wait_until(
            lambda: _status(queue, ids["refused"], TaskStatus.RUNNING), message="both running"
        )
        workers.start(url, concurrency=4, lease=30.0, queues=("logs",))
        for name in ("lost", "refused"):
            # Claimed a second time: by the other worker, once the first one's lease ran out.
            assert await queue.get_value(ids[name], timeout=30) == "unblocked"
            info = await queue.get_task(ids[name])
            assert info is not None and info.attempts == 2, name

    await wait_until(
        lambda: (
            "outcome refused" in workers.output(logging_worker)
            and "lost its lease" in workers.output(logging_worker)
        ),
        timeout=30,
        message="the lost and refused lines",
    )
    assert workers.stop(logging_worker) == 0
    return workers.output(logging_worker), ids


def _lines_of(output: str, task_id: str) -> Iterator[str]:
    return (line for line in output.splitlines() if task_id in line)


async def test_text_lines_for_every_outcome(
    url: str, tmp_path: Path, worker_processes: WorkerProcesses
) -> None:
    output, ids = await _every_outcome(url, tmp_path, worker_processes, "text")
    expect = {
        "succeeded": ("INFO", "tests.conformance.tasks.add succeeded in"),
        "failed": ("WARNING", "tests.conformance.tasks.fail failed after"),
        "retrying": ("INFO", "retrying in"),
        "timed_out": ("WARNING", "timed out after"),
        "cancelled": ("INFO", "cancelled after"),
        "lost": ("WARNING", "lost its lease"),
        "refused": ("WARNING", "outcome refused"),
    }
    for name, (level, text) in expect.items():
        lines = [line for line in _lines_of(output, ids[name]) if text in line]
        assert lines, f"no {name} line in:\n{output}"
        assert f" {level} sitq.task: " in lines[0]
        assert "(queue logs, attempt " in lines[0]
    failed_at = output.index("tests.conformance.tasks.fail failed after")
    assert "Traceback (most recent call last)" in output[failed_at:]
    assert "ValueError: boom" in output[failed_at:]
    assert any("started" in line for line in _lines_of(output, ids["succeeded"]))


async def test_json_lines_for_every_outcome(
    url: str, tmp_path: Path, worker_processes: WorkerProcesses
) -> None:
    output, ids = await _every_outcome(url, tmp_path, worker_processes, "json")
    records: list[dict[str, Any]] = []
    for line in output.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    for name in ("succeeded", "failed", "retrying", "timed_out", "cancelled", "lost", "refused"):
        mine = [r for r in records if r.get("task_id") == ids[name] and r.get("outcome") == name]
        assert mine, f"no {name} record"
        record = mine[0]
        assert record["queue"] == "logs" and record["attempt"] >= 1
        assert isinstance(record["duration"], float) and record["function"].startswith(
            "tests.conformance.tasks."
        )
    failed = next(r for r in records if r.get("outcome") == "failed")
    assert failed["level"] == "WARNING" and failed["error"] == "ValueError: boom"
    assert "Traceback" in failed["message"]
    started = [r for r in records if r.get("outcome") == "started"]
    assert started and all(r["level"] == "DEBUG" for r in started)
