"""The dashboard's cached counts (one backend read per TTL, shared by concurrent readers), its
throughput sampling from the workers' counters, and what ``create_app`` refuses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from sitq import ConfigurationError, MemoryBackend, TaskQueue
from sitq.models import QueueStats, WorkerInfo
from tests.conformance import tasks
from tests.services import require_module

require_module("starlette")

from sitq.web import create_app  # noqa: E402
from sitq.web._counts import MAX_GAP, Counts, _Sampler  # noqa: E402


class CountingQueue(TaskQueue):
    """A queue on a real (memory) backend that counts its ``stats()`` calls, each of which
    yields to the loop a few times, as a network round trip would."""

    def __init__(self) -> None:
        super().__init__(MemoryBackend())
        self.stats_calls = 0

    async def stats(self) -> list[QueueStats]:
        self.stats_calls += 1
        for _ in range(5):
            await asyncio.sleep(0)
        return await super().stats()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_readers_share_one_refresh_and_the_ttl_holds() -> None:
    queue = CountingQueue()
    clock = Clock()
    counts = Counts(queue, ttl=2.0, clock=clock)
    await queue.options(queue="q").enqueue(tasks.add, 1, 2)
    snapshots = await asyncio.gather(*(counts.get() for _ in range(50)))
    assert queue.stats_calls == 1
    assert all(s is snapshots[0] for s in snapshots)
    assert snapshots[0].queue_dicts() == [
        {
            "queue": "q",
            "pending": 1,
            "scheduled": 0,
            "running": 0,
            "succeeded": 0,
            "failed": 0,
            "cancelled": 0,
        }
    ]
    await queue.options(queue="q").enqueue(tasks.add, 3, 4)
    clock.now += 1.9
    assert (await counts.get()) is snapshots[0]  # within the TTL: the cached counts
    assert queue.stats_calls == 1
    clock.now += 0.2
    fresh = await counts.get()
    assert queue.stats_calls == 2
    assert fresh.queues[0].pending == 2 and fresh.max_age == 2.0
    await queue.close()


def _worker(worker_id: str, processed: int, failed: int = 0, started: float = 0.0) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id,
        hostname="h",
        pid=1,
        kind="async",
        queues=("default",),
        concurrency=1,
        running=0,
        processed=processed,
        failed=failed,
        started_at=datetime.fromtimestamp(started, UTC),
        last_seen=None,
    )


def test_throughput_adds_each_workers_increase() -> None:
    sampler = _Sampler()
    sampler.add(100.0, [_worker("a", 10, 1)])
    sampler.add(102.0, [_worker("a", 14, 2)])
    # "b" started after the previous sample: all it did falls in this interval.
    sampler.add(104.0, [_worker("a", 15, 2), _worker("b", 3, 0, started=103.0)])
    # "c" was running before sampling began: its earlier work is not this interval's.
    sampler.add(106.0, [_worker("a", 15, 2), _worker("b", 3), _worker("c", 50, 0, started=50.0)])
    summary = sampler.summary(106.0)
    last_minute = summary.windows[0]
    assert last_minute["window"] == 60
    assert (last_minute["finished"], last_minute["failed"]) == (4 + 4, 1)
    assert last_minute["observed"] == 6.0
    assert last_minute["per_minute"] == 80.0
    assert summary.minutes[0] == {"ago": 0, "finished": 8, "failed": 1, "observed": 6.0}
    assert len(summary.minutes) == 15


def test_a_long_gap_is_left_out_and_old_samples_expire() -> None:
    sampler = _Sampler()
    sampler.add(0.0, [_worker("a", 0)])
    sampler.add(2.0, [_worker("a", 5)])
    sampler.add(2.0 + MAX_GAP + 1, [_worker("a", 500)])  # nobody watched: not guessed
    assert sampler.summary(2.0 + MAX_GAP + 1).windows[2]["finished"] == 5
    sampler.add(2.0 + MAX_GAP + 3, [_worker("a", 502)])
    later = 2.0 + MAX_GAP + 3
    assert [w["finished"] for w in sampler.summary(later).windows] == [2, 7, 7]
    sampler.add(later + 900, [_worker("a", 502)])
    sampler.add(later + 902, [_worker("a", 503)])
    window = sampler.summary(later + 902).windows
    assert [w["finished"] for w in window] == [1, 1, 1]
    nothing = _Sampler().summary(0.0)
    assert nothing.windows[0]["per_minute"] is None and nothing.windows[0]["observed"] == 0


def test_create_app_refuses_what_it_cannot_use() -> None:
    queue = TaskQueue(MemoryBackend())
    with pytest.raises(ConfigurationError, match=r"needs a sitq\.TaskQueue, not str"):
        create_app("sqlite:///sitq.db")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="token must be a non-empty string"):
        create_app(queue, token=" ")
    with pytest.raises(ConfigurationError, match="counts_ttl must be 0 or more seconds"):
        create_app(queue, counts_ttl=-1)


class SlowCountQueue(CountingQueue):
    """A queue whose count takes ``took`` seconds of the fake clock, like NATS beside many
    tasks."""

    def __init__(self, clock: Clock, took: float) -> None:
        super().__init__()
        self.clock, self.took = clock, took

    async def stats(self) -> list[QueueStats]:
        self.clock.now += self.took
        return await super().stats()


async def test_a_slow_count_is_held_longer_than_the_ttl() -> None:
    clock = Clock()
    queue = SlowCountQueue(clock, took=3.0)
    counts = Counts(queue, ttl=2.0, clock=clock)
    first = await counts.get()
    assert queue.stats_calls == 1 and first.max_age == 15.0  # held 4 x 3 s, plus the 3 s count
    clock.now += 11.9
    assert await counts.get() is first
    clock.now += 0.2
    assert await counts.get() is not first
    assert queue.stats_calls == 2
    queue.took = 0.1  # a quick count: the TTL again
    clock.now += 12.1
    quick = await counts.get()
    assert quick.max_age == 2.1
    clock.now += 2.05
    assert await counts.get() is not quick
    await queue.close()
