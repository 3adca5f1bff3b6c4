"""docs/contract.md, Scheduling, Order and No busy waiting: how far ahead a task can be scheduled,
which ETAs are refused at enqueue, and the order of tasks whose ETA had already passed when they
were enqueued."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from sitq import (
    AsyncWorker,
    ConfigurationError,
    FixedBackoff,
    RetryPolicy,
    SyncTaskQueue,
    TaskQueue,
    TaskStatus,
)
from sitq.backends.base import Backend
from sitq.models import to_datetime
from sitq.testing import SyncTestQueue
from tests.conformance import tasks
from tests.conftest import BackendFactory, wait_until

FAR_ETAS = {
    "year-2400": datetime(2400, 1, 1, tzinfo=UTC),
    "year-9999": datetime.max.replace(tzinfo=UTC),
}

IDLE_WINDOW = 2.0
IDLE_MAX_CALLS = 60
"""Backend calls an idle worker may make in ``IDLE_WINDOW`` seconds: a few per poll interval
and cron re-read. A worker handed the same far task over and over makes thousands."""


@contextlib.contextmanager
def counting_calls(backend: Backend) -> Iterator[collections.Counter[str]]:
    """Count every call of the backend object's async methods until the block ends."""
    counts: collections.Counter[str] = collections.Counter()
    names = [n for n, v in inspect.getmembers(Backend) if inspect.iscoroutinefunction(v)]

    def counted(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return await method(*args, **kwargs)

        return call

    for name in names:
        setattr(backend, name, counted(name, getattr(backend, name)))
    try:
        yield counts
    finally:
        for name in names:
            delattr(backend, name)


@pytest.mark.parametrize("when", list(FAR_ETAS.values()), ids=list(FAR_ETAS))
async def test_far_eta_stays_scheduled_and_the_worker_stays_idle(
    backends: BackendFactory, when: datetime
) -> None:
    queue = TaskQueue(backends.make())
    await queue.connect()
    worker_backend = backends.make()
    try:
        far = await queue.enqueue_at(when, tasks.add, 1, 1)
        snap = await queue.backend.get_task(far)
        assert snap is not None
        reported = to_datetime(snap.eta)
        assert reported is not None, f"the stored ETA {snap.eta!r} is not a datetime"
        assert abs(reported - when) < timedelta(seconds=1)
        with counting_calls(worker_backend) as calls:
            async with AsyncWorker(worker_backend, concurrency=1, poll_interval=0.5):
                # Enqueued after the far task: once it has run, the worker has looked at both.
                probe = await queue.enqueue(tasks.add, 2, 2)
                assert await queue.get_value(probe, timeout=20) == 4
                calls.clear()
                await asyncio.sleep(IDLE_WINDOW)  # measuring an interval, not awaiting an outcome
                idle_calls = sum(calls.values())
                assert await queue.get_status(far) is TaskStatus.PENDING
                stats = {s.queue: s for s in await queue.stats()}["default"]
                assert (stats.scheduled, stats.pending, stats.running) == (1, 0, 0)
                assert await queue.cancel(far) is True
                assert await queue.get_status(far) is TaskStatus.CANCELLED
        assert idle_calls <= IDLE_MAX_CALLS, (
            f"an idle worker made {idle_calls} backend calls in {IDLE_WINDOW} s: {dict(calls)}"
        )
    finally:
        if worker_backend is not queue.backend:
            await worker_backend.close()
        await queue.close()


_AFTER_MAX = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5)))
"""04:00 UTC on 1 January 10000: a valid datetime that no ETA can hold."""

BAD_SCHEDULES: list[tuple[str, Callable[[TaskQueue], Awaitable[str]], str]] = [
    ("in inf", lambda q: q.enqueue_in(math.inf, tasks.add, 1, 1), "inf"),
    ("in -inf", lambda q: q.enqueue_in(-math.inf, tasks.add, 1, 1), "-inf"),
    ("in nan", lambda q: q.enqueue_in(math.nan, tasks.add, 1, 1), "nan"),
    ("in 1e300", lambda q: q.enqueue_in(1e300, tasks.add, 1, 1), "1e+300"),
    ("in timedelta.max", lambda q: q.enqueue_in(timedelta.max, tasks.add, 1, 1), "999999999"),
    (
        "options in inf",
        lambda q: q.options(priority=3).enqueue_in(math.inf, tasks.add, 1, 1),
        "inf",
    ),
    ("at year 10000 UTC", lambda q: q.enqueue_at(_AFTER_MAX, tasks.add, 1, 1), "9999-12-31"),
    (
        "options at year 10000",
        lambda q: q.options(queue="x").enqueue_at(_AFTER_MAX, tasks.add, 1, 1),
        "9999-12-31",
    ),
]


async def test_unholdable_etas_are_refused_at_enqueue(queue: TaskQueue) -> None:
    for label, enqueue, shown in BAD_SCHEDULES:
        with pytest.raises(ConfigurationError) as info:
            await enqueue(queue)
        message = str(info.value)
        assert shown in message, f"{label}: the error does not show the value: {message}"
        # It says what would be accepted.
        assert "9999-12-31 23:59:59" in message or "finite" in message, f"{label}: {message}"
    # A retry policy whose waits add up past the latest ETA is refused where it is given.
    endless = RetryPolicy(max_attempts=3, backoff=FixedBackoff(2e11))
    with pytest.raises(ConfigurationError, match="9999-12-31 23:59:59"):
        queue.options(retry=endless)
    assert await queue.stats() == [], "a refused task was stored"


def test_the_sync_queue_refuses_them_too(backends: BackendFactory) -> None:
    # A memory store has its sync face in sitq.testing (SyncTaskQueue refuses one).
    sync = SyncTestQueue() if backends.name == "memory" else SyncTaskQueue(backends.make())
    with sync as queue:
        for bad in (math.inf, -math.inf, math.nan, 1e300, timedelta.max):
            with pytest.raises(ConfigurationError, match=r"finite|9999-12-31"):
                queue.enqueue_in(bad, tasks.add, 1, 1)
        with pytest.raises(ConfigurationError, match="9999-12-31 23:59:59"):
            queue.options(priority=2).enqueue_at(_AFTER_MAX, tasks.add, 1, 1)
        with pytest.raises(ConfigurationError, match="9999-12-31 23:59:59"):
            queue.options(retry=RetryPolicy(max_attempts=3, backoff=FixedBackoff(2e11)))
        assert queue.stats() == [], "a refused task was stored"


async def test_past_etas_run_in_enqueue_order(queue: TaskQueue, tmp_path: Path) -> None:
    """A past ETA counts as due from the moment the task is enqueued, so among tasks of equal
    priority those enqueued with past ETAs run in enqueue order, however far back the ETA."""
    now = datetime.now(UTC)
    etas = {
        "now": now,
        "an-hour-ago": now - timedelta(hours=1),
        "1969": datetime(1969, 7, 20, 20, 17, tzinfo=UTC),
        "year-1": datetime(1, 1, 1),  # naive: UTC
    }
    reported = {}
    for label, eta in etas.items():
        before = time.time()
        task_id = await queue.enqueue_at(eta, tasks.record, str(tmp_path), label)
        snap = await queue.backend.get_task(task_id)
        assert snap is not None and snap.status is TaskStatus.PENDING
        reported[label] = (before, snap)
    # One slot, started after every enqueue: the order of execution is the order of claims.
    async with AsyncWorker(queue.backend, concurrency=1, poll_interval=0.2):
        await wait_until(lambda: all(tasks.executions(tmp_path, lb) for lb in etas))
    starts = {lb: tasks.executions(tmp_path, lb)[0]["start"] for lb in etas}
    assert sorted(etas, key=lambda lb: starts[lb]) == list(etas)
    for label, (before, snap) in reported.items():
        # Reported as due since it was enqueued (a server backend may use its own clock).
        assert snap.eta >= before - 5, f"{label}: reported ETA {to_datetime(snap.eta)}"
        assert abs(snap.eta - snap.enqueued_at) < 5, f"{label}: {snap}"
