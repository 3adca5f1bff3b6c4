"""SPEC §2.2, §2.3 and §2.6: lost workers, fencing tokens, many worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

from sitq import ProcessWorker, TaskQueue, TaskStatus
from sitq.models import ClaimRef, Finish, LeaseState
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until


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
    worker_processes.start(shared_backends.url, lease=1.0)
    result = await shared_queue.get_result(task_id, timeout=20)
    assert result is not None
    assert result.status == TaskStatus.SUCCESS
    assert result.attempts == 2
    assert shared_queue.serializer.loads(result.value or b"") != f"done by {first.pid}"


async def test_stale_claim_cannot_overwrite_the_result(queue: TaskQueue) -> None:
    """A claim whose lease was taken over can neither settle nor extend its lease."""
    backend = queue.backend
    task_id = await queue.enqueue(tasks.add, 1, 2)
    (slow,) = await backend.claim(["default"], 1, "slow-worker", lease=0.2)
    assert await backend.claim(["default"], 1, "other", lease=0.2) == []
    taken: list = []

    async def take_over() -> bool:
        taken.extend(await backend.claim(["default"], 1, "fast-worker", lease=30))
        return bool(taken)

    await wait_until(take_over, message="the expired lease to be claimed again")
    (fast,) = taken
    assert fast.task_id == task_id
    assert fast.fencing_token != slow.fencing_token
    assert fast.attempts == 2
    now = time.time()
    slow_ref = ClaimRef(task_id, slow.fencing_token)
    fast_ref = ClaimRef(task_id, fast.fencing_token)
    assert await backend.extend_lease([slow_ref], 30) == [LeaseState.LOST]
    fast_done = Finish(
        fast_ref, TaskStatus.SUCCESS, queue.serializer.dumps("fast"), None, None, now, now + 60
    )
    slow_done = Finish(
        slow_ref, TaskStatus.SUCCESS, queue.serializer.dumps("slow"), None, None, now, now + 60
    )
    assert await backend.settle([fast_done]) == [True]
    assert await backend.settle([slow_done]) == [False]
    assert await backend.settle([fast_done]) == [False]
    assert await queue.get_value(task_id) == "fast"


async def test_paused_worker_result_is_refused(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
) -> None:
    """A worker frozen (SIGSTOP) past its lease loses the task; when it resumes, its result is
    refused and the task keeps the result of the worker that took over."""
    assert shared_backends.url is not None
    task_id = await shared_queue.enqueue(tasks.sleep_then_pid, 1.0)
    frozen = worker_processes.start(shared_backends.url, lease=1.0)
    await wait_until(
        lambda: _status(shared_queue, task_id, TaskStatus.RUNNING), message="the task to start"
    )
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        worker_processes.start(shared_backends.url, lease=1.0)
        value = await shared_queue.get_value(task_id, timeout=20)
        assert value != frozen.pid
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    await wait_until(
        lambda: (
            "refused" in worker_processes.output(frozen)
            or "lost" in worker_processes.output(frozen)
        ),
        message="the resumed worker to find its claim gone",
    )
    assert await shared_queue.get_value(task_id) == value
    result = await shared_queue.get_result(task_id)
    assert result is not None and result.attempts == 2


async def _status(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status


async def test_many_worker_processes_drain_exactly_once(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    assert shared_backends.url is not None
    total = 600
    ids = await shared_queue.enqueue_many(
        [(tasks.record_item, (str(tmp_path), "drain", i)) for i in range(total)]
    )
    procs = [worker_processes.start(shared_backends.url, concurrency=4) for _ in range(3)]
    results = [await shared_queue.get_result(i, timeout=60) for i in ids]
    assert all(r is not None and r.status == TaskStatus.SUCCESS for r in results)
    assert [shared_queue.serializer.loads(r.value) for r in results if r] == list(range(total))
    lines = (tmp_path / "drain.log").read_text().split()
    items = Counter(int(item) for item in lines[0::2])
    assert items == Counter(range(total)), "every task executed exactly once"
    pids = {int(pid) for pid in lines[1::2]}
    assert pids <= {p.pid for p in procs}
    stats = {s.queue: s for s in await shared_queue.stats()}
    assert stats["default"].succeeded == total
    assert stats["default"].pending == stats["default"].running == 0


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
    worker_processes.start(shared_backends.url, lease=0.5)
    result = await shared_queue.get_result(task_id, timeout=20)
    assert result is not None
    assert result.status == TaskStatus.FAILED
    assert result.error is not None
    assert "max_deliveries=2" in result.error
    assert "started 2 times" in result.error


async def test_process_that_dies_fails_only_its_task(queue: TaskQueue) -> None:
    dead = await queue.enqueue(tasks.always_exit, 3)
    killed = await queue.enqueue(tasks.kill_own_process)
    fine = await queue.enqueue(tasks.add, 2, 2)
    async with ProcessWorker(queue.backend, concurrency=1, poll_interval=0.2):
        dead_result = await queue.get_result(dead, timeout=20)
        killed_result = await queue.get_result(killed, timeout=20)
        assert await queue.get_value(fine, timeout=20) == 4
    assert dead_result is not None and dead_result.status == TaskStatus.FAILED
    assert "exit" in (dead_result.error or "") and "3" in (dead_result.error or "")
    assert killed_result is not None and "SIGKILL" in (killed_result.error or "")


async def test_lease_is_renewed_while_a_long_task_runs(queue: TaskQueue) -> None:
    """A task running for several lease periods is not taken over (the heartbeat renews it)."""
    from sitq import AsyncWorker

    task_id = await queue.enqueue(tasks.sleep_async, 1.5)
    async with AsyncWorker(queue.backend, lease=0.5, poll_interval=0.1) as worker:
        assert await queue.get_value(task_id, timeout=10) == "slept"
        await asyncio.sleep(0)
    result = await queue.get_result(task_id)
    assert result is not None and result.attempts == 1
    assert worker.counters["lost"] == 0
