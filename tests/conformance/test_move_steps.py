"""docs/contract.md, Moving between backends: the three storage steps ``sitq move`` is made of
(``hold``, ``put_stored``, ``drop_held``), the same on every backend. The command itself, from
store to store and killed part way, is tests/integration/test_move.py."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime

from sitq import TaskQueue, TaskStatus
from sitq.models import ClaimRef
from tests.conformance import tasks

HOLDER = "sitq-move"


async def test_held_tasks_are_out_of_workers_reach_and_kept_as_stored(queue: TaskQueue) -> None:
    backend = queue.backend
    later = time.time() + 3600
    now_id = await queue.options(priority=3).enqueue(tasks.add, 1, 2)
    later_id = await queue.options(task_id="move-later").enqueue_at(
        datetime.fromtimestamp(later, UTC), tasks.add, 3, 4
    )
    running_id = await queue.options(queue="elsewhere").enqueue(tasks.add, 5, 6)
    (running,) = await backend.claim(["elsewhere"], 1, "a-worker", 30)
    assert running.task_id == running_id

    held = await backend.hold(["default", "elsewhere"], 10, HOLDER)
    by_id = {h.record.task.id: h for h in held}
    assert set(by_id) == {now_id, later_id}, "pending and scheduled ones, not a running one"
    assert by_id[now_id].record.task.priority == 3
    assert abs(by_id[later_id].record.task.eta - later) < 0.01
    assert queue.serializer.loads_call(by_id[now_id].record.task.payload)[1] == (1, 2)
    # Out of every worker's reach, and listed as running under the mover.
    assert await backend.claim(["default"], 10, "a-worker", 30) == []
    info = await queue.get_task(now_id)
    assert info is not None and info.status is TaskStatus.RUNNING
    # Held again by the same mover (a move run again after it was killed): the same tasks.
    again = await backend.hold(["default"], 10, HOLDER)
    assert {h.record.task.id for h in again} == {now_id, later_id}

    stale = [ClaimRef(h.ref.task_id, h.ref.fencing_token - 1) for h in held]
    current = [h.ref for h in again]
    assert await backend.drop_held(stale) == [False, False]
    assert sorted(await backend.drop_held(current)) == [True, True]
    assert await backend.drop_held(current) == [False, False]
    assert await queue.get_task(now_id) is None
    assert await queue.get_task(later_id) is None
    assert await queue.get_status(running_id) is TaskStatus.RUNNING


async def test_stored_records_come_back_as_they_were(queue: TaskQueue) -> None:
    backend = queue.backend
    first = await queue.options(priority=2).enqueue(tasks.add, 1, 2)
    scheduled = await queue.enqueue_in(3600, tasks.add, 3, 4)
    held = await backend.hold(["default"], 10, HOLDER)
    records = [h.record for h in held]
    assert sorted(await backend.drop_held([h.ref for h in held])) == [True, True]
    # Stored back as they were, with what earlier attempts left.
    worn = [replace(r, attempts=2, retries=1, error="ValueError: once") for r in records]
    assert await backend.put_stored(worn) == [True, True]
    assert await backend.put_stored(worn) == [False, False], "an id still known stays as it is"
    info = await queue.get_task(scheduled)
    assert info is not None and info.status is TaskStatus.PENDING
    assert info.eta is not None and info.eta.timestamp() > time.time() + 3000
    (claim,) = await backend.claim(["default"], 10, "a-worker", 30)
    assert claim.task_id == first
    assert claim.attempts == 3, "the attempts it had, and this one"
    assert queue.serializer.loads_call(claim.payload)[1] == (1, 2)
