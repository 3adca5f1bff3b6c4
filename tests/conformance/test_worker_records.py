"""docs/operating.md, Workers: every worker registers itself and leaves the list when it
stops (at once) or dies (within its lease)."""

from __future__ import annotations

import os
import signal

from sitq import TaskQueue
from sitq.models import WorkerInfo
from tests.conftest import BackendFactory, WorkerProcesses, wait_until


async def test_list_workers_with_a_stopped_and_a_killed_worker(
    shared_backends: BackendFactory, worker_processes: WorkerProcesses
) -> None:
    assert shared_backends.url is not None
    queue = TaskQueue(shared_backends.make())
    async with queue:
        stopped = worker_processes.start(
            shared_backends.url, kind="thread", concurrency=3, lease=2.0, queues=("w1",)
        )
        killed = worker_processes.start(
            shared_backends.url, kind="process", concurrency=1, lease=2.0, queues=("w2", "w3")
        )
        found: list[WorkerInfo] = []

        async def both_listed() -> bool:
            found[:] = await queue.list_workers()
            return {w.pid for w in found} >= {stopped.pid, killed.pid}

        await wait_until(both_listed, timeout=30, message="both workers listed")
        by_pid = {w.pid: w for w in found}
        first, second = by_pid[stopped.pid], by_pid[killed.pid]
        assert (first.kind, first.queues, first.concurrency) == ("thread", ("w1",), 3)
        assert (second.kind, second.queues, second.concurrency) == ("process", ("w2", "w3"), 1)
        assert first.hostname == os.uname().nodename
        assert first.started_at is not None and first.last_seen is not None
        assert first.started_at <= first.last_seen
        assert (first.running, first.processed, first.failed) == (0, 0, 0)
        assert first.to_dict()["queues"] == ["w1"]

        assert worker_processes.stop(stopped) == 0
        # A worker that stopped is gone at once.
        pids = {w.pid for w in await queue.list_workers()}
        assert stopped.pid not in pids and killed.pid in pids

        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()

        async def none_left() -> bool:
            return not {w.pid for w in await queue.list_workers()} & {killed.pid}

        # One that died leaves within its lease (2 s), not at once.
        await wait_until(none_left, timeout=10, message="the killed worker to expire")
