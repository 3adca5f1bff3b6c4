"""docs/contract.md, At-least-once execution: leases bring back the tasks of lost workers;
max_deliveries ends the loop. With every worker kind: a process worker's tasks run in its pool's
processes, which die with it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from sitq import AsyncWorker, TaskQueue, TaskStatus
from sitq.backends.base import Backend
from sitq.models import Claim
from sitq.worker import WORKER_KINDS
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until

KINDS = ["async", "thread", "process"]


@pytest.mark.parametrize("kind", KINDS)
async def test_worker_killed_mid_task_task_completes_elsewhere(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
    kind: str,
) -> None:
    assert shared_backends.url is not None
    task_id = await shared_queue.enqueue(tasks.block_first_time, str(tmp_path), "k")
    first = worker_processes.start(shared_backends.url, kind=kind, concurrency=1, lease=1.0)
    marker = tmp_path / "k.first"
    await wait_until(
        lambda: marker.exists() and marker.read_text().strip() != "",
        timeout=30,
        message="the first worker to start the task",
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    worker_processes.start(shared_backends.url, kind=kind, concurrency=1, lease=5.0)
    result = await shared_queue.get_result(task_id, timeout=30)
    assert result is not None
    assert result.status == TaskStatus.SUCCESS
    assert result.attempts == 2
    ran_first = int(marker.read_text())
    assert shared_queue.serializer.loads(result.value or b"") != f"done by {ran_first}"
    # A process worker ran it in its pool's process; the others in their own process.
    assert (ran_first == first.pid) == (kind != "process"), (kind, ran_first, first.pid)


async def test_task_that_keeps_killing_its_worker_is_failed(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
) -> None:
    assert shared_backends.url is not None
    await _keeps_killing_its_worker(shared_queue, shared_backends.url, worker_processes, "async")


@pytest.mark.parametrize("kind", ["thread", "process"])
async def test_task_that_keeps_killing_its_worker_is_failed_under_other_kinds(
    worker_processes: WorkerProcesses, tmp_path: Path, kind: str
) -> None:
    """The same with a thread or a process worker, on SQLite (the backend's part is the same
    whatever the kind; the case above runs on every backend)."""
    url = f"sqlite:///{tmp_path / 'sitq.db'}"
    async with TaskQueue(url) as queue:
        await _keeps_killing_its_worker(queue, url, worker_processes, kind)


async def _keeps_killing_its_worker(
    queue: TaskQueue, url: str, worker_processes: WorkerProcesses, kind: str
) -> None:
    task_id = await queue.options(max_deliveries=2).enqueue(tasks.kill_worker_process, kind)
    for _ in range(2):
        proc = worker_processes.start(url, kind=kind, concurrency=1, lease=0.5)
        await wait_until(
            lambda p=proc: p.poll() is not None, timeout=30, message="the worker to be killed"
        )
        assert proc.returncode == -signal.SIGKILL
    worker_processes.start(url, kind=kind, concurrency=1, lease=5.0)
    result = await queue.get_result(task_id, timeout=30)
    assert result is not None
    assert result.status == TaskStatus.FAILED
    assert result.error is not None
    assert "max_deliveries=2" in result.error
    assert "started 2 times" in result.error


#: The lease of the renewal tests, and a heartbeat at a third of it: a heartbeat late by more
#: than 1 s on a loaded machine would lose it.
LEASE = 1.5
#: Long enough for the lease to have run out twice without a heartbeat.
LONG_TASK = 3.0


async def not_taken_over(queue: TaskQueue, thief: Backend, task_id: str) -> None:
    """Wait for the task's success while another worker keeps trying to claim it: it must never
    get it (the running task's lease is renewed in time)."""

    async def running() -> bool:
        return await queue.get_status(task_id) == TaskStatus.RUNNING

    await wait_until(running, timeout=30, message="the worker to start the task")
    stolen: list[Claim] = []

    async def finished_or_stolen() -> bool:
        stolen.extend(await thief.claim(["default"], 1, "another-worker", 30))
        return bool(stolen) or await queue.get_status(task_id) == TaskStatus.SUCCESS

    await wait_until(finished_or_stolen, timeout=30, interval=0.1, message="the task to finish")
    assert not stolen, "another worker claimed the running task: its lease ran out"
    result = await queue.get_result(task_id)
    assert result is not None and result.attempts == 1


async def test_lease_is_renewed_while_a_long_task_runs(
    queue: TaskQueue, backends: BackendFactory
) -> None:
    """A task running for several lease periods is not taken over (the heartbeat renews it)."""
    thief = backends.make()
    if not thief.connected:
        await thief.connect()
    task_id = await queue.enqueue(tasks.sleep_async, LONG_TASK)
    try:
        async with AsyncWorker(backends.make(), lease=LEASE) as worker:
            await not_taken_over(queue, thief, task_id)
    finally:
        await thief.close()
    assert worker.counters["lost"] == 0


@pytest.mark.parametrize("kind", ["thread", "process"])
async def test_lease_is_renewed_under_thread_and_process_workers(
    worker_processes: WorkerProcesses, tmp_path: Path, kind: str
) -> None:
    """The same with a blocking task in a ``sitq worker`` process's thread or in its pool's
    process, on SQLite (the case above is the async worker's, on every backend)."""
    url = f"sqlite:///{tmp_path / 'sitq.db'}"
    async with TaskQueue(url) as queue:
        task_id = await queue.enqueue(tasks.sleep_sync, LONG_TASK)
        worker_processes.start(url, kind=kind, concurrency=1, lease=LEASE)
        await not_taken_over(queue, queue.backend, task_id)


def test_the_kinds_above_are_every_kind() -> None:
    assert sorted(KINDS) == sorted(WORKER_KINDS)
