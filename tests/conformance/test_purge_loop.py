"""docs/contract.md, Results expire: a running worker removes expired results by itself (every
``purge_interval`` seconds, 30 by default, so within a minute of expiry)."""

from __future__ import annotations

import time

import pytest

from sitq import AsyncWorker, ConfigurationError, TaskQueue
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until


async def test_worker_purges_expired_results(queue: TaskQueue) -> None:
    task_id = await queue.options(result_ttl=0.5).enqueue(tasks.add, 1, 1)
    async with AsyncWorker(queue.backend, poll_interval=0.2, purge_interval=0.2) as worker:
        assert await queue.get_value(task_id, timeout=10) == 2
        await wait_until(
            lambda: worker.counters["purged"] >= 1,
            timeout=10,
            message="the worker's purge loop to remove the expired result",
        )
        assert await queue.get_status(task_id) is None
    # Nothing expired is left for anyone else to remove: the record itself is gone.
    assert await queue.backend.purge_expired(time.time()) == 0
    assert worker.counters["purged"] == 1


@pytest.mark.multiprocess
async def test_purge_interval_from_the_command_line(
    shared_backends: BackendFactory, worker_processes: WorkerProcesses
) -> None:
    assert shared_backends.url is not None
    queue = TaskQueue(shared_backends.make())
    async with queue:
        task_id = await queue.options(result_ttl=0.5).enqueue(tasks.add, 2, 3)
        proc = worker_processes.start(
            shared_backends.url,
            concurrency=1,
            extra=("--purge-interval", "0.2", "--log-level", "DEBUG"),
        )
        assert await queue.get_value(task_id, timeout=20) == 5
        await wait_until(
            lambda: "removed 1 expired result" in worker_processes.output(proc),
            timeout=10,
            message="the worker process to report removing the expired result",
        )
        assert await queue.backend.purge_expired(time.time()) == 0
        assert worker_processes.stop(proc) == 0


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "30", True])
def test_purge_interval_must_be_a_positive_number(bad: object) -> None:
    with pytest.raises(
        ConfigurationError, match="purge_interval must be a finite number of seconds > 0"
    ):
        AsyncWorker("memory://", purge_interval=bad)  # type: ignore[arg-type]
