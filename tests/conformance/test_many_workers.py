"""docs/contract.md, Many workers, many machines: many worker processes share one backend; each task
runs once. The three workers are one of each kind (async, thread, process), all started before the
tasks come in."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from sitq import TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conformance.processes import process_tree
from tests.conftest import BackendFactory, WorkerProcesses, wait_until

KINDS = ["async", "thread", "process"]


async def test_many_worker_processes_drain_exactly_once(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    assert shared_backends.url is not None
    procs = {
        kind: worker_processes.start(
            shared_backends.url, kind=kind, concurrency=4, extra=("--log-level", "INFO")
        )
        for kind in KINDS
    }
    await wait_until(
        lambda: all(" started on " in worker_processes.output(p) for p in procs.values()),
        timeout=60,
        message="the workers to start",
    )
    total = 600
    ids = await shared_queue.enqueue_many(
        [(tasks.record_item_after, (str(tmp_path), "drain", i, 0.01)) for i in range(total)]
    )
    results = [await shared_queue.get_result(i, timeout=60) for i in ids]
    assert all(r is not None and r.status == TaskStatus.SUCCESS for r in results)
    assert [shared_queue.serializer.loads(r.value) for r in results if r] == list(range(total))
    lines = (tmp_path / "drain.log").read_text().split()
    items = Counter(int(item) for item in lines[0::2])
    assert items == Counter(range(total)), "every task executed exactly once"
    # Each worker ran its share: a process worker in its pool's processes, the others in
    # their own process.
    runs = Counter(int(pid) for pid in lines[1::2])
    ran: dict[str, Counter[int]] = {}
    for kind, proc in procs.items():
        tree = set(process_tree(proc.pid))
        ran[kind] = Counter({pid: n for pid, n in runs.items() if pid in tree})
    assert sum(sum(c.values()) for c in ran.values()) == total, f"ran elsewhere: {runs}"
    for kind, proc in procs.items():
        assert ran[kind], f"the {kind} worker ran no task: {ran}"
        in_itself = set(ran[kind]) == {proc.pid}
        assert in_itself == (kind != "process"), f"where the {kind} worker ran tasks: {ran}"
    stats = {s.queue: s for s in await shared_queue.stats()}
    assert stats["default"].succeeded == total
    assert stats["default"].pending == stats["default"].running == 0
