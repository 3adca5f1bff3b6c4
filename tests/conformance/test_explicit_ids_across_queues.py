"""docs/contract.md, Enqueueing: an explicit ``task_id`` names one task. Two clients that enqueue
the same id at the same moment, each on a queue of its own, store it once between them, and it runs
once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from sitq import AsyncWorker, TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conftest import BackendFactory, wait_until

TOTAL = 400
AT_ONCE = 40
QUEUES = ("qa", "qb")


def _ran(log_dir: Path, queue: str) -> Counter[int]:
    path = log_dir / f"{queue}.log"
    if not path.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)


async def _counts(queue: TaskQueue) -> dict[str, tuple[int, int]]:
    """(pending, succeeded) of each of the two queues."""
    stats = {s.queue: s for s in await queue.stats()}
    return {q: (stats[q].pending, stats[q].succeeded) if q in stats else (0, 0) for q in QUEUES}


async def _enqueue_on_both(clients: list[TaskQueue], log_dir: Path, ids: range) -> None:
    """Each id by both clients at once: the first on ``qa``, the second on ``qb``."""
    for start in range(ids.start, ids.stop, AT_ONCE):
        calls = []
        for i in range(start, min(start + AT_ONCE, ids.stop)):
            for client, queue in zip(clients, QUEUES, strict=True):
                view = client.options(task_id=f"order-{i}", queue=queue)
                calls.append(view.enqueue(tasks.record_item, str(log_dir), queue, i))
        returned = await asyncio.gather(*calls)
        assert returned == [
            f"order-{i}" for i in range(start, start + len(calls) // 2) for _ in QUEUES
        ]


async def test_an_id_enqueued_on_two_queues_at_once_is_one_task(
    backends: BackendFactory, tmp_path: Path
) -> None:
    clients = [TaskQueue(backends.make()), TaskQueue(backends.make())]
    for client in clients:
        await client.connect()
    try:
        await _enqueue_on_both(clients, tmp_path, range(TOTAL))
        counts = await _counts(clients[0])
        pending = {q: counts[q][0] for q in QUEUES}
        assert sum(pending.values()) == TOTAL, f"one task per id, not {pending}"
        for i in (0, TOTAL // 2, TOTAL - 1):
            assert await clients[1].get_status(f"order-{i}") == TaskStatus.PENDING

        async with AsyncWorker(backends.make(), concurrency=8, queues=QUEUES, poll_interval=0.2):

            async def drained() -> bool:
                counts = await _counts(clients[0])
                return sum(s for _, s in counts.values()) >= TOTAL

            await wait_until(drained, timeout=60, message=f"{TOTAL} tasks to finish")
            # Enqueueing the ids again while their results are kept stores nothing.
            await _enqueue_on_both(clients, tmp_path, range(0, TOTAL, 10))
            counts = await _counts(clients[1])
        assert counts == {q: (0, pending[q]) for q in QUEUES}, counts
        for q in QUEUES:
            assert sum(_ran(tmp_path, q).values()) == pending[q], f"the tasks of {q} ran once"
        assert _ran(tmp_path, "qa") + _ran(tmp_path, "qb") == Counter(range(TOTAL)), (
            "every id ran exactly once"
        )
        values = await asyncio.gather(*(clients[0].get_value(f"order-{i}") for i in range(TOTAL)))
        assert values == list(range(TOTAL))
    finally:
        for client in clients:
            await client.close()
