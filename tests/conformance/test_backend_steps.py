"""docs/contract.md, Cron schedules, Locks and Concurrency keys, at the storage level: the backend
steps that cron, locks and concurrency keys are built on, with the guarantee each step's docstring
states, on every backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sitq import TaskQueue
from sitq.backends.base import Backend
from sitq.models import (
    Claim,
    ClaimRef,
    Finish,
    LeaseState,
    Release,
    Reschedule,
    Settlement,
    TaskStatus,
)
from tests.conformance import tasks
from tests.conftest import BackendFactory, wait_until

ODD_NAME = "tenant/7:é*#" + "x" * 200


@pytest.fixture
async def others(backends: BackendFactory) -> AsyncIterator[list[Backend]]:
    """Four more connected backend objects on the same store (other clients)."""
    made = [backends.make() for _ in range(4)]
    for backend in made:
        if not backend.connected:
            await backend.connect()
    yield made
    if backends.shared:
        for backend in made:
            await backend.close()


def _finish(claim: Claim) -> Finish:
    now = time.time()
    return Finish(
        claim.ref,
        TaskStatus.SUCCESS,
        None,
        None,
        None,
        now,
        now + 60,
    )


# -- fencing (docs/contract.md, Exactly one result) -----------------------------------------


async def test_a_stale_claim_is_refused_while_the_new_claim_still_runs(
    queue: TaskQueue, others: list[Backend]
) -> None:
    """A worker whose lease lapsed (frozen, or cut off from the store) comes back while the
    worker that took the task over is still running it. The task is running either way, so
    only the fencing token tells the two claims apart: the stale claim's lease extension,
    finish, retry and release are each refused and change nothing, and the new holder's lease
    and result stand. A task without a concurrency key, whose settle takes the plainest path."""
    stale_worker, backend = others[0], queue.backend
    task_id = await queue.enqueue(tasks.add, 1, 2)
    (stale,) = await stale_worker.claim(["default"], 1, "stale-worker", 1.0)
    taken: list[Claim] = []

    async def take_over() -> bool:
        taken.extend(await backend.claim(["default"], 1, "new-worker", 60))
        return bool(taken)

    await wait_until(take_over, message="the lapsed lease to be claimed again")
    (current,) = taken
    assert current.task_id == task_id and current.attempts == 2
    assert current.fencing_token != stale.fencing_token
    old = ClaimRef(task_id, stale.fencing_token)
    new = ClaimRef(task_id, current.fencing_token)

    async def unchanged(step: str) -> None:
        snap = await backend.get_task(task_id)
        assert snap is not None, f"the stale claim's {step} removed the task"
        assert (snap.status, snap.attempts) == (TaskStatus.RUNNING, 2), (
            f"the stale claim's {step} changed the task the new claim runs: {snap}"
        )

    assert await stale_worker.extend_lease([old], 60) == [LeaseState.LOST]
    await unchanged("lease extension")
    now = time.time()
    stale_steps: list[tuple[str, Settlement]] = [
        (
            "finish",
            Finish(
                old, TaskStatus.SUCCESS, queue.serializer.dumps("stale"), None, None, now, now + 60
            ),
        ),
        ("retry", Reschedule(old, now + 3600, "stale retry", None)),
        ("release", Release(old)),
    ]
    for step, settlement in stale_steps:
        assert await stale_worker.settle([settlement]) == [False], f"the stale {step} applied"
        await unchanged(step)
    assert await backend.extend_lease([new], 60) == [LeaseState.HELD]
    done = Finish(new, TaskStatus.SUCCESS, queue.serializer.dumps("new"), None, None, now, now + 60)
    assert await backend.settle([done]) == [True]
    assert await queue.get_value(task_id) == "new"
    result = await queue.get_result(task_id)
    assert result is not None and result.attempts == 2


# -- cron storage ---------------------------------------------------------------------------


async def test_cron_records_are_stored_replaced_and_deleted(queue: TaskQueue) -> None:
    backend = queue.backend
    assert await backend.list_crons() == []
    await backend.put_cron("b", b"def-b", 1000.0)
    await backend.put_cron(ODD_NAME, b"def-odd", 2000.0)
    await backend.put_cron("a", b"\x00binary\xff", 3000.0)
    names = [r.name for r in await backend.list_crons()]
    assert names == sorted(["a", "b", ODD_NAME])
    assert await backend.advance_cron("b", 1000.0, 1060.0)
    await backend.put_cron("b", b"def-b2", 5000.0)
    (b,) = [r for r in await backend.list_crons() if r.name == "b"]
    assert b.definition == b"def-b2"
    assert b.last_tick == 1060.0, "replacing a definition must keep the last tick"
    (a,) = [r for r in await backend.list_crons() if r.name == "a"]
    assert a.definition == b"\x00binary\xff" and a.last_tick == 3000.0
    assert await backend.delete_cron("b") is True
    assert await backend.delete_cron("b") is False
    assert [r.name for r in await backend.list_crons()] == sorted(["a", ODD_NAME])
    assert await backend.advance_cron("b", 1060.0, 1120.0) is False


async def test_advance_cron_is_a_compare_and_set(queue: TaskQueue, others: list[Backend]) -> None:
    backend = queue.backend
    await backend.put_cron("tick", b"d", 100.0)
    assert await backend.advance_cron("tick", 99.0, 160.0) is False
    results = await asyncio.gather(
        *(b.advance_cron("tick", 100.0, 160.0) for b in [backend, *others, *others])
    )
    assert results.count(True) == 1
    (rec,) = await backend.list_crons()
    assert rec.last_tick == 160.0


# -- locks ----------------------------------------------------------------------------------


async def test_lock_has_one_owner(queue: TaskQueue) -> None:
    backend = queue.backend
    assert await backend.acquire_lock(ODD_NAME, "t1", 30) is True
    assert await backend.acquire_lock(ODD_NAME, "t2", 30) is False
    assert await backend.extend_lock(ODD_NAME, "t2", 30) is False
    assert await backend.release_lock(ODD_NAME, "t2") is False
    assert await backend.acquire_lock(ODD_NAME, "t3", 30) is False, "a stranger released it"
    assert await backend.extend_lock(ODD_NAME, "t1", 30) is True
    assert await backend.acquire_lock("another", "t2", 30) is True, "locks are independent"
    assert await backend.release_lock(ODD_NAME, "t1") is True
    assert await backend.release_lock(ODD_NAME, "t1") is False
    assert await backend.acquire_lock(ODD_NAME, "t2", 30) is True


async def test_lock_of_a_dead_holder_frees_itself_after_its_ttl(queue: TaskQueue) -> None:
    backend = queue.backend
    assert await backend.acquire_lock("dead", "gone", 0.5) is True

    async def taken() -> bool:
        return await backend.acquire_lock("dead", "alive", 30)

    await wait_until(taken, timeout=10, message="the expired lock to be acquirable")
    assert await backend.extend_lock("dead", "gone", 30) is False
    assert await backend.release_lock("dead", "gone") is False
    assert await backend.acquire_lock("dead", "third", 30) is False


async def test_extending_keeps_the_lock_past_its_first_ttl(queue: TaskQueue) -> None:
    # Extended every 0.1 s with a TTL of 1.2 s: a stall of over a second on a loaded machine
    # would still not let the lock go. Held for over two TTLs.
    backend = queue.backend
    ttl = 1.2
    assert await backend.acquire_lock("kept", "holder", ttl)
    deadline = time.monotonic() + 2.1 * ttl
    while time.monotonic() < deadline:
        assert await backend.extend_lock("kept", "holder", ttl)
        assert await backend.acquire_lock("kept", "other", 30) is False
        await asyncio.sleep(0.1)


async def test_concurrent_acquire_has_one_winner(queue: TaskQueue, others: list[Backend]) -> None:
    clients = [queue.backend, *others]
    results = await asyncio.gather(
        *(b.acquire_lock("race", f"token-{i}", 30) for i, b in enumerate(clients * 2))
    )
    assert results.count(True) == 1


# -- concurrency keys -----------------------------------------------------------------------


async def test_one_claim_hands_out_no_more_than_the_limit(queue: TaskQueue) -> None:
    keyed = queue.options(concurrency_key=ODD_NAME, concurrency_limit=2)
    for i in range(5):
        await keyed.enqueue(tasks.add, i, i)
    first = await queue.backend.claim(["default"], 10, "w", 30)
    assert len(first) == 2
    assert await queue.backend.claim(["default"], 10, "w", 30) == []
    assert await queue.backend.settle([_finish(first[0])]) == [True]
    second = await queue.backend.claim(["default"], 10, "w", 30)
    assert len(second) == 1
    (stats,) = await queue.stats()
    assert (stats.pending, stats.running, stats.succeeded) == (2, 2, 1)


async def test_a_full_key_does_not_hold_back_other_tasks(queue: TaskQueue) -> None:
    keyed = queue.options(concurrency_key="k", concurrency_limit=1, priority=10)
    for i in range(20):
        await keyed.enqueue(tasks.add, i, i)
    await queue.options(concurrency_key="other", concurrency_limit=1).enqueue(tasks.add, 0, 0)
    plain = await queue.enqueue(tasks.add, 1, 1)
    backend = queue.backend
    (first,) = await backend.claim(["default"], 1, "w", 30)
    claimed = await backend.claim(["default"], 1, "w", 30)
    claimed += await backend.claim(["default"], 1, "w", 30)
    assert len(claimed) == 2, "tasks behind a full key must still be handed out"
    assert plain in {c.task_id for c in claimed}
    assert await backend.claim(["default"], 5, "w", 30) == []
    assert first.task_id not in {c.task_id for c in claimed}


async def test_keys_are_counted_per_queue(queue: TaskQueue) -> None:
    for name in ("q1", "q2"):
        view = queue.options(queue=name, concurrency_key="shared", concurrency_limit=1)
        await view.enqueue(tasks.add, 1, 1)
        await view.enqueue(tasks.add, 2, 2)
    claimed = await queue.backend.claim(["q1", "q2"], 10, "w", 30)
    assert sorted(c.queue for c in claimed) == ["q1", "q2"]


async def test_release_and_retry_free_the_slot(queue: TaskQueue) -> None:
    keyed = queue.options(concurrency_key="k", concurrency_limit=1)
    for i in range(3):
        await keyed.enqueue(tasks.add, i, i)
    backend = queue.backend
    (a,) = await backend.claim(["default"], 5, "w", 30)
    assert await backend.settle([Release(a.ref)]) == [True]
    (b,) = await backend.claim(["default"], 5, "w", 30)
    retry = Reschedule(b.ref, time.time() + 3600, "boom", None)
    assert await backend.settle([retry]) == [True]
    (c,) = await backend.claim(["default"], 5, "w", 30)
    assert await backend.claim(["default"], 5, "w", 30) == []
    assert await backend.settle([_finish(c)]) == [True]


async def test_an_expired_lease_frees_its_slot_once(queue: TaskQueue) -> None:
    keyed = queue.options(concurrency_key="k", concurrency_limit=1)
    for i in range(3):
        await keyed.enqueue(tasks.add, i, i)
    backend = queue.backend
    assert len(await backend.claim(["default"], 5, "dead-worker", 0.3)) == 1
    taken: list[Claim] = []

    async def slot_freed() -> bool:
        taken.extend(await backend.claim(["default"], 5, "w", 30))
        return bool(taken)

    await wait_until(slot_freed, timeout=15, message="the dead worker's slot to free itself")
    assert len(taken) == 1, "one slot, so one task, even with an expired claim also due"
    assert await backend.claim(["default"], 5, "w", 30) == []


async def test_concurrent_claimers_never_exceed_the_limit(
    queue: TaskQueue, others: list[Backend]
) -> None:
    keyed = queue.options(concurrency_key="k", concurrency_limit=3)
    await keyed.enqueue_many([(tasks.add, (i, i)) for i in range(30)])
    clients = [queue.backend, *others]
    batches = await asyncio.gather(
        *(b.claim(["default"], 4, f"w{i}", 30) for i, b in enumerate(clients * 2))
    )
    assert sum(len(b) for b in batches) == 3


async def test_settling_a_keyed_task_wakes_a_waiting_worker(
    queue: TaskQueue, others: list[Backend]
) -> None:
    keyed = queue.options(concurrency_key="k", concurrency_limit=1)
    await keyed.enqueue(tasks.add, 1, 1)
    await keyed.enqueue(tasks.add, 2, 2)
    waiter = others[0]
    (running,) = await queue.backend.claim(["default"], 5, "w1", 30)
    assert await waiter.claim(["default"], 5, "w2", 30) == []
    wait = asyncio.create_task(waiter.wait_for_work(["default"], 60))
    await asyncio.sleep(0.2)  # let the waiter block first: the settle below must end its wait
    assert await queue.backend.settle([_finish(running)]) == [True]
    await asyncio.wait_for(wait, 20)  # TimeoutError here: the freed slot woke nobody
    assert len(await waiter.claim(["default"], 5, "w2", 30)) == 1


async def test_a_lapsed_keyed_lease_is_lost_not_extended(queue: TaskQueue) -> None:
    """A keyed task whose lease ran out gave up its slot (another task may hold it now), so a
    late heartbeat must not revive it: the limit would be exceeded."""
    keyed = queue.options(concurrency_key="k", concurrency_limit=1)
    task_id = await keyed.enqueue(tasks.add, 1, 1)
    backend = queue.backend
    (late,) = await backend.claim(["default"], 5, "frozen-worker", 0.3)
    lapsed_at = time.time() + 0.6
    await wait_until(lambda: time.time() > lapsed_at, message="the lease to lapse")
    late_ref = ClaimRef(task_id, late.fencing_token)
    assert await backend.extend_lease([late_ref], 30) == [LeaseState.LOST]
    (again,) = await backend.claim(["default"], 5, "w", 30)
    assert again.task_id == task_id and again.attempts == 2
    assert await backend.settle([_finish(late)]) == [False]
    assert await backend.settle([_finish(again)]) == [True]
