"""The dashboard's counts: one backend call per refresh interval, shared by every viewer.

``TaskQueue.stats()`` counts rows on SQLite and PostgreSQL, so the dashboard must not call it
for every poll of every open page. :class:`Counts` keeps the last answer (the counts of each
queue and the live workers) for ``ttl`` seconds (2 by default): a reader within that time gets
the cached snapshot; the first reader after it refreshes, and readers arriving meanwhile wait
for that same refresh instead of starting their own (single flight). So the backend sees at
most one ``stats()`` and one ``list_workers()`` per ``ttl``, however many pages are open, and
what a page shows is at most ``ttl`` seconds old (plus the time the refresh itself took).

A count that takes long (NATS reads every task record to count: about 3 s beside 100,000
tasks) is held longer: a snapshot is served for ``ttl`` or ``BUSY_FACTOR`` times as long as
the refresh took, whichever is more, so counting never takes more than a fifth of the backend's
time however long the pages stay open. ``Snapshot.max_age`` says how old the counts may be.

Throughput comes from the workers' own counters: each worker record carries ``processed`` (tasks
it finished, succeeded or failed) and ``failed``, refreshed with its heartbeat (at most every
2 s). Each refresh compares every worker's counters with the previous refresh and adds the
increase to a ring of samples covering the last 15 minutes (a worker that appeared since the
previous refresh counts whole, when it started after it). Samples are taken only when the counts
are refreshed, that is while someone reads the overview, ``/api/queues`` or ``/metrics``; a gap
of more than a minute between two refreshes is left out rather than guessed, and the summary
says how many seconds of each window were observed. Tasks finished by a worker that stopped
between two refreshes, after the first of them, are not counted.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sitq.errors import ConfigurationError
from sitq.models import QueueStats, WorkerInfo
from sitq.queue import TaskQueue

__all__ = ["COUNT_STATES", "Counts", "Snapshot", "Throughput"]

COUNT_STATES = ("pending", "scheduled", "running", "succeeded", "failed", "cancelled")
"""The counts of each queue, in the order ``sitq info`` prints them."""

WINDOWS = (60, 300, 900)
"""The windows (seconds) the throughput summary covers: the last 1, 5 and 15 minutes."""

BUSY_FACTOR = 4.0
"""A snapshot is held at least this many times as long as its refresh took."""

MAX_GAP = 60.0
"""A gap (seconds) between two refreshes longer than this is not counted in the throughput."""


@dataclass(frozen=True, slots=True)
class _Interval:
    end: float
    seconds: float
    finished: int
    failed: int


@dataclass(frozen=True, slots=True)
class Throughput:
    """Tasks finished by the live workers over the last minutes, from the samples taken."""

    windows: list[dict[str, Any]]
    """For each of the last 1, 5 and 15 minutes: ``window`` (seconds), ``finished`` and
    ``failed`` (tasks), ``observed`` (seconds of the window covered by samples) and
    ``per_minute`` (finished per minute over the observed time, or ``None``)."""
    minutes: list[dict[str, Any]]
    """The last 15 minutes one by one, the latest first: ``ago`` (0 is the current minute),
    ``finished``, ``failed`` and ``observed`` (seconds)."""

    def to_dict(self) -> dict[str, Any]:
        """Ready for ``json.dumps``."""
        return {"windows": self.windows, "minutes": self.minutes}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one refresh read: each queue's counts, the live workers, and when."""

    queues: list[QueueStats]
    workers: list[WorkerInfo]
    counted_at: datetime
    throughput: Throughput
    max_age: float
    """The most the counts can be out of date when they are read (seconds): how long the
    snapshot is held (the TTL, or longer after a slow count) plus the time counting took."""

    def queue_dicts(self) -> list[dict[str, Any]]:
        """The counts as ``GET /api/queues`` answers them: ``queue`` and each state's count."""
        return [{"queue": s.queue, **{k: getattr(s, k) for k in COUNT_STATES}} for s in self.queues]

    def queue_names(self) -> list[str]:
        """The queues that have tasks."""
        return [s.queue for s in self.queues]


@dataclass
class _Sampler:
    """The ring of throughput samples (see the module docstring)."""

    window: float = float(max(WINDOWS))
    last_at: float | None = None
    last: dict[str, tuple[int, int]] = field(default_factory=dict)
    intervals: deque[_Interval] = field(default_factory=deque)

    def add(self, now: float, workers: list[WorkerInfo]) -> None:
        """Take one sample at wall time ``now``."""
        current = {w.worker_id: (w.processed, w.failed) for w in workers}
        if self.last_at is not None and 0 < now - self.last_at <= MAX_GAP:
            finished = failed = 0
            for w in workers:
                before = self.last.get(w.worker_id)
                if before is not None:
                    finished += max(0, w.processed - before[0])
                    failed += max(0, w.failed - before[1])
                elif w.started_at is not None and w.started_at.timestamp() >= self.last_at:
                    finished += w.processed
                    failed += w.failed
            self.intervals.append(_Interval(now, now - self.last_at, finished, failed))
        self.last_at, self.last = now, current
        while self.intervals and self.intervals[0].end < now - self.window:
            self.intervals.popleft()

    def summary(self, now: float) -> Throughput:
        """The windows and the minutes, as of ``now``."""
        windows = []
        for size in WINDOWS:
            inside = [i for i in self.intervals if i.end > now - size]
            observed = min(float(size), sum(i.seconds for i in inside))
            finished = sum(i.finished for i in inside)
            windows.append(
                {
                    "window": size,
                    "finished": finished,
                    "failed": sum(i.failed for i in inside),
                    "observed": round(observed, 1),
                    "per_minute": round(finished * 60 / observed, 1) if observed > 0 else None,
                }
            )
        minutes = [
            {"ago": ago, "finished": 0, "failed": 0, "observed": 0.0}
            for ago in range(max(WINDOWS) // 60)
        ]
        for i in self.intervals:
            ago = int((now - i.end) // 60)
            if 0 <= ago < len(minutes):
                minutes[ago]["finished"] += i.finished
                minutes[ago]["failed"] += i.failed
                minutes[ago]["observed"] = round(minutes[ago]["observed"] + i.seconds, 1)
        return Throughput(windows=windows, minutes=minutes)


class Counts:
    """The cached counts and workers of one queue's backend (see the module docstring).

    ``ttl`` is how long a snapshot is served before the next reader refreshes it.
    """

    def __init__(
        self,
        queue: TaskQueue,
        ttl: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl >= 0:
            raise ConfigurationError(f"counts_ttl must be 0 or more seconds, not {ttl!r}")
        self.queue = queue
        self.ttl = ttl
        self._clock = clock
        self._wall = wall
        self._snapshot: Snapshot | None = None
        self._fresh_until = 0.0
        self._lock: asyncio.Lock | None = None
        self._sampler = _Sampler()

    async def get(self) -> Snapshot:
        """The counts, at most ``ttl`` seconds old (longer after a slow count: see the module
        docstring): refreshed by one caller, shared by all."""
        snapshot = self._snapshot
        if snapshot is not None and self._clock() < self._fresh_until:
            return snapshot
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            # Whoever waited here while another caller refreshed takes that refresh.
            snapshot = self._snapshot
            if snapshot is not None and self._clock() < self._fresh_until:
                return snapshot
            return await self._refresh()

    async def _refresh(self) -> Snapshot:
        started = self._clock()
        queues = await self.queue.stats()
        workers = await self.queue.list_workers()
        took = self._clock() - started
        hold = max(self.ttl, BUSY_FACTOR * took)
        now = self._wall()
        self._sampler.add(now, workers)
        snapshot = Snapshot(
            queues=sorted(queues, key=lambda s: s.queue),
            workers=workers,
            counted_at=datetime.fromtimestamp(now, UTC),
            throughput=self._sampler.summary(now),
            max_age=round(hold + took, 1),
        )
        self._snapshot = snapshot
        self._fresh_until = self._clock() + hold
        return snapshot
