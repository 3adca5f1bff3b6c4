"""SPEC §2.6: many worker processes share one backend; each task runs once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sitq import (
    AsyncWorker,
    ProcessWorker,
    TaskQueue,
    TaskStatus,
    ThreadWorker,
)
from sitq.worker import Worker
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses

KINDS: list[type[Worker]] = [AsyncWorker, ThreadWorker, ProcessWorker]


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
