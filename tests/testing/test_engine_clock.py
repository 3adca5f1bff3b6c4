"""Where the engine reads the time: the clock it is given, checked where it is given, and by
default ``time.time`` looked up at each call."""

from __future__ import annotations

import time

import pytest

from sitq import AsyncWorker, ConfigurationError, MemoryBackend, TaskQueue
from sitq.cron import CronDriver
from tests.testing import tasks


@pytest.mark.parametrize(
    "make",
    [
        lambda clock: TaskQueue(MemoryBackend(), clock=clock),
        lambda clock: AsyncWorker(MemoryBackend(), clock=clock),
        lambda clock: MemoryBackend(clock=clock),
        lambda clock: CronDriver(MemoryBackend(), clock=clock),
    ],
    ids=["TaskQueue", "AsyncWorker", "MemoryBackend", "CronDriver"],
)
def test_a_clock_that_cannot_be_called_is_refused_where_it_is_given(make: object) -> None:
    with pytest.raises(ConfigurationError, match=r"clock must be a callable .* not 1700000000"):
        make(1_700_000_000)  # type: ignore[operator]


async def test_the_default_clock_is_time_time_read_at_each_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A queue made before ``time.time`` is patched still sees the patch (as it always did)."""
    queue = TaskQueue(MemoryBackend())
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    task_id = await queue.enqueue_in(60, tasks.add, 1, 1)
    info = await queue.get_task(task_id)
    assert info is not None
    assert info.enqueued_at is not None and info.enqueued_at.timestamp() == 2_000_000_000.0
    assert info.eta is not None and info.eta.timestamp() == 2_000_000_060.0
