"""The in-memory backend: the reference statement of the backend contract.

It keeps everything in this process and loses it on exit, so it suits tests and trying things
out; several workers in one process (one event loop) can share it. It is the shortest readable
implementation of each step in :mod:`sitq.backends.base`. Its clock is ``time.time`` unless it is
given another (``sitq.testing`` gives it a :class:`~sitq.testing.FakeClock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from sitq.backends._options import UrlOptions
from sitq.backends._waiting import Polls, ResultWaiters, wait_for_final
from sitq.backends.base import Backend, stats_from_counts, stats_kind
from sitq.errors import BackendError, ConfigurationError, check_clock
from sitq.models import (
    MAX_ETA_TIMESTAMP,
    CancelOutcome,
    Claim,
    ClaimRef,
    CronRecord,
    Finish,
    HeldTask,
    LeaseState,
    NewTask,
    Progress,
    QueueStats,
    Release,
    ReplaceOutcome,
    RequeueOutcome,
    Reschedule,
    Settlement,
    SnapshotPage,
    StoredTask,
    TaskSnapshot,
    TaskStatus,
    WorkerRecord,
)


@dataclass(slots=True)
class _Record:
    task: NewTask
    seq: int
    status: TaskStatus = TaskStatus.PENDING
    eta: float = 0.0
    attempts: int = 0
    retries: int = 0
    fence: int = 0
    lease_until: float = 0.0
    worker_id: str | None = None
    cancel_requested: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    value: bytes | None = None
    error: str | None = None
    traceback: str | None = None
    payload: bytes | None = field(default=None)
    progress: float | None = None
    progress_message: str | None = None


class _KeySlots:
    """Free slots per (queue, concurrency key), from the tasks running under a live lease."""

    def __init__(self, running: Iterable[_Record], now: float) -> None:
        self._busy: dict[tuple[str, str], int] = {}
        for rec in running:
            key = rec.task.concurrency_key
            if key is not None and rec.lease_until > now:
                slot = (rec.task.queue, key)
                self._busy[slot] = self._busy.get(slot, 0) + 1

    def admit(self, task: NewTask) -> bool:
        """Count ``task`` as started if its key has a free slot; ``False`` if it must wait."""
        if task.concurrency_key is None:
            return True
        slot = (task.queue, task.concurrency_key)
        busy = self._busy.get(slot, 0)
        assert task.concurrency_limit is not None
        if busy >= task.concurrency_limit:
            return False
        self._busy[slot] = busy + 1
        return True


class MemoryBackend(Backend):
    """Tasks in a dict, due tasks in heaps; nothing survives the process.

    ``clock`` is where it reads the time (POSIX seconds) for ETAs, leases and expiry: ``time.time``
    by default.
    """

    scheme = ("memory",)

    @classmethod
    def from_url(cls, url: str) -> MemoryBackend:
        """A new, empty backend from ``memory://`` (which takes no options)."""
        options = UrlOptions(url, {}, backend="memory")
        if options.others:
            raise ConfigurationError(
                f"memory:// takes no options, got {sorted(name for name, _ in options.others)}"
            )
        return cls()

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = check_clock(clock)
        self._tasks: dict[str, _Record] = {}
        self._ready: dict[str, list[tuple[int, float, int, str]]] = {}
        self._scheduled: list[tuple[float, int, str]] = []
        self._running: dict[str, _Record] = {}
        self._seq = itertools.count()
        self._connected = False
        self._work: asyncio.Event | None = None
        self._waiters = ResultWaiters()
        self._crons: dict[str, CronRecord] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._workers: dict[str, WorkerRecord] = {}

    async def connect(self) -> None:
        """Mark the backend usable (there is nothing to open)."""
        if not self._connected:
            self._work = asyncio.Event()
            self._connected = True

    async def close(self) -> None:
        """Mark the backend closed and wake every waiter; the tasks stay for a reconnect."""
        if self._connected:
            self._connected = False
            assert self._work is not None
            self._work.set()
            self._waiters.wake_all()

    def detach(self) -> None:
        """Forget the wake-up event of an event loop that has ended; the tasks stay."""
        self._work = asyncio.Event()
        self._waiters = ResultWaiters()

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""
        return self._connected

    def _check(self) -> None:
        if not self._connected:
            raise BackendError("MemoryBackend is not connected: call `await backend.connect()`")

    def _live(self, task_id: str, now: float) -> _Record | None:
        rec = self._tasks.get(task_id)
        if rec is not None and rec.expires_at is not None and rec.expires_at <= now:
            del self._tasks[task_id]
            return None
        return rec

    def _make_ready(self, rec: _Record) -> None:
        entry = (-rec.task.priority, rec.eta, rec.seq, rec.task.id)
        heapq.heappush(self._ready.setdefault(rec.task.queue, []), entry)

    def _schedule(self, rec: _Record, now: float) -> None:
        if rec.eta <= now:
            self._make_ready(rec)
        else:
            heapq.heappush(self._scheduled, (rec.eta, rec.seq, rec.task.id))
        assert self._work is not None
        self._work.set()

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store new tasks; an id still known is left alone."""
        self._check()
        now = self._clock()
        stored: list[bool] = []
        for task in tasks:
            if self._live(task.id, now) is not None:
                stored.append(False)
                continue
            rec = _Record(task=task, seq=next(self._seq), eta=task.eta, payload=task.payload)
            self._tasks[task.id] = rec
            self._schedule(rec, now)
            stored.append(True)
        return stored

    async def enqueue_replacing(self, task: NewTask) -> ReplaceOutcome:
        """Store the task, or replace the pending or finished record of its id (one step: this
        backend runs every step to its end on one event loop)."""
        self._check()
        now = self._clock()
        old = self._live(task.id, now)
        outcome = ReplaceOutcome.STORED
        fence = 0
        if old is not None:
            if old.task.queue != task.queue:
                return ReplaceOutcome.OTHER_QUEUE
            if old.status is TaskStatus.RUNNING:
                return ReplaceOutcome.RUNNING
            fence = old.fence
            if old.status is TaskStatus.PENDING:
                outcome = ReplaceOutcome.REPLACED_PENDING
                task = replace(task, enqueued_at=old.task.enqueued_at)
            else:
                outcome = ReplaceOutcome.REPLACED_FINISHED
        # A new record under a new sequence number: the heap entries of the old one no longer
        # match it and are dropped when they come up.
        rec = _Record(task=task, seq=next(self._seq), eta=task.eta, payload=task.payload)
        rec.fence = fence
        self._tasks[task.id] = rec
        self._schedule(rec, now)
        return outcome

    def _promote_due(self, now: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            eta, seq, task_id = heapq.heappop(self._scheduled)
            rec = self._tasks.get(task_id)
            if (
                rec is not None
                and rec.status is TaskStatus.PENDING
                and rec.seq == seq
                and rec.eta == eta
            ):
                self._make_ready(rec)

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Hand out due tasks: expired leases first, then the ready heaps in priority order.

        A keyed task whose key is full is set aside for this call and pushed back afterwards,
        so it neither runs nor holds back the tasks behind it.
        """
        self._check()
        now = self._clock()
        self._promote_due(now)
        chosen: list[_Record] = []
        wanted = set(queues)
        slots = _KeySlots(self._running.values(), now)
        for rec in self._running.values():
            if len(chosen) >= limit:
                break
            if rec.lease_until <= now and rec.task.queue in wanted and slots.admit(rec.task):
                chosen.append(rec)
        set_aside: list[tuple[str, tuple[int, float, int, str]]] = []
        while len(chosen) < limit:
            best: tuple[tuple[int, float, int, str], str] | None = None
            for queue in queues:
                heap = self._ready.get(queue)
                while heap:
                    _, eta, seq, task_id = heap[0]
                    head = self._tasks.get(task_id)
                    if (
                        head is None
                        or head.status is not TaskStatus.PENDING
                        or head.seq != seq
                        or head.eta != eta
                    ):
                        heapq.heappop(heap)
                        continue
                    break
                if heap and (best is None or heap[0] < best[0]):
                    best = (heap[0], queue)
            if best is None:
                break
            heapq.heappop(self._ready[best[1]])
            rec = self._tasks[best[0][3]]
            if slots.admit(rec.task):
                chosen.append(rec)
            else:
                set_aside.append((best[1], best[0]))
        for queue, entry in set_aside:
            heapq.heappush(self._ready[queue], entry)
        claims = []
        for rec in chosen:
            rec.status = TaskStatus.RUNNING
            rec.attempts += 1
            rec.fence += 1
            rec.lease_until = now + lease
            rec.worker_id = worker_id
            rec.started_at = now
            rec.progress = rec.progress_message = None
            self._running[rec.task.id] = rec
            assert rec.payload is not None
            claims.append(
                Claim(
                    task_id=rec.task.id,
                    queue=rec.task.queue,
                    payload=rec.payload,
                    options=rec.task.options,
                    priority=rec.task.priority,
                    fencing_token=rec.fence,
                    attempts=rec.attempts,
                    retries=rec.retries,
                    enqueued_at=rec.task.enqueued_at,
                    started_at=now,
                    result_ttl=rec.task.result_ttl,
                    cancel_requested=rec.cancel_requested,
                    function=rec.task.function,
                )
            )
        return claims

    def _current(self, ref: ClaimRef) -> _Record | None:
        rec = self._tasks.get(ref.task_id)
        if rec is None or rec.status is not TaskStatus.RUNNING or rec.fence != ref.fencing_token:
            return None
        return rec

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Extend current claims; report lost ones."""
        self._check()
        now = self._clock()
        states = []
        for ref in claims:
            rec = self._current(ref)
            if rec is None or (rec.task.concurrency_key is not None and rec.lease_until <= now):
                # A keyed task's lapsed lease gave up its slot, which another task may hold now.
                states.append(LeaseState.LOST)
                continue
            rec.lease_until = now + lease
            states.append(LeaseState.CANCEL_REQUESTED if rec.cancel_requested else LeaseState.HELD)
        return states

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply each settlement whose claim is current."""
        self._check()
        now = self._clock()
        applied = []
        for item in settlements:
            rec = self._current(item.claim)
            if rec is None:
                applied.append(False)
                continue
            rec.worker_id = None
            del self._running[rec.task.id]
            if rec.task.concurrency_key is not None:
                assert self._work is not None
                self._work.set()
            if isinstance(item, Finish):
                rec.status = item.status
                rec.value = item.value
                rec.error = item.error
                rec.traceback = item.traceback
                rec.finished_at = item.finished_at
                rec.expires_at = item.expires_at
                if item.status is TaskStatus.SUCCESS:
                    rec.payload = None
                self._waiters.finished([rec.task.id])
            elif isinstance(item, Reschedule):
                rec.status = TaskStatus.PENDING
                rec.retries += 1
                rec.eta = item.eta
                rec.error = item.error
                rec.traceback = item.traceback
                rec.seq = next(self._seq)
                self._schedule(rec, now)
            elif isinstance(item, Release):
                rec.status = TaskStatus.PENDING
                rec.attempts -= 1
                if item.delay > 0:
                    rec.eta = now + item.delay
                rec.seq = next(self._seq)
                self._schedule(rec, now)
            applied.append(True)
        return applied

    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Cancel a pending task or flag a running one."""
        self._check()
        rec = self._live(task_id, now)
        if rec is None:
            return CancelOutcome.NOT_FOUND
        if rec.status.is_final:
            return CancelOutcome.ALREADY_FINISHED
        if rec.status is TaskStatus.RUNNING:
            rec.cancel_requested = True
            return CancelOutcome.REQUESTED
        rec.status = TaskStatus.CANCELLED
        rec.error = "cancelled before it started"
        rec.finished_at = now
        rec.expires_at = now + rec.task.result_ttl
        self._waiters.finished([task_id])
        return CancelOutcome.CANCELLED

    async def get_task(self, task_id: str) -> TaskSnapshot | None:
        """The task's current state."""
        self._check()
        rec = self._live(task_id, self._clock())
        return None if rec is None else _snapshot(rec, rec.value)

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Wait for the task to finish, woken by the settle or cancel that finishes it."""
        self._check()
        with self._waiters.watch(task_id) as arm:
            return await wait_for_final(
                lambda: self.get_task(task_id),
                timeout,
                arm=arm,
                polls=Polls.every(lambda: math.inf),
                is_open=lambda: self._connected,
            )

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for an enqueue or reschedule, or for the earliest scheduled ETA."""
        self._check()
        assert self._work is not None
        now = self._clock()
        if self._scheduled:
            timeout = min(timeout, max(self._scheduled[0][0] - now, 0.0))
        if self._running:
            first_expiry = min(r.lease_until for r in self._running.values())
            timeout = min(timeout, max(first_expiry - now, 0.0))
        self._work.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)

    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Drop finished tasks whose results expired."""
        self._check()
        expired = [
            tid
            for tid, rec in self._tasks.items()
            if rec.expires_at is not None and rec.expires_at <= now
        ][:limit]
        for tid in expired:
            del self._tasks[tid]
        return len(expired)

    async def stats(self, now: float) -> list[QueueStats]:
        """Count tasks per queue and state."""
        self._check()
        return stats_from_counts(
            (rec.task.queue, stats_kind(rec.status, rec.eta > now), 1)
            for rec in self._tasks.values()
            if rec.expires_at is None or rec.expires_at > now
        )

    # -- inspection and operator actions -------------------------------------------------

    async def list_tasks(
        self, status: TaskStatus, queue: str | None, limit: int, after: str | None, now: float
    ) -> SnapshotPage:
        """Sort the matching records (a memory store is small: no index is kept)."""
        self._check()
        start = None if after is None else tuple(json.loads(after))
        rows = []
        for rec in self._tasks.values():
            if rec.status is not status or (queue is not None and rec.task.queue != queue):
                continue
            if rec.expires_at is not None and rec.expires_at <= now:
                continue
            key = _list_key(rec)
            if start is None or key > start:
                rows.append((key, rec))
        rows.sort(key=lambda row: row[0])
        page = rows[:limit]
        more = len(rows) > limit
        return SnapshotPage(
            tasks=[_snapshot(rec, None) for _, rec in page],
            after=json.dumps(page[-1][0]) if more else None,
        )

    async def requeue(self, task_ids: Sequence[str], now: float) -> list[RequeueOutcome]:
        """Make failed and cancelled records pending again."""
        self._check()
        outcomes = []
        for task_id in task_ids:
            rec = self._live(task_id, now)
            if rec is None:
                outcomes.append(RequeueOutcome.NOT_FOUND)
                continue
            if rec.status not in _REQUEUABLE or rec.payload is None:
                outcomes.append(RequeueOutcome.REFUSED)
                continue
            rec.status = TaskStatus.PENDING
            rec.attempts = rec.retries = 0
            rec.eta = now
            rec.cancel_requested = False
            rec.started_at = rec.finished_at = rec.expires_at = None
            rec.value = rec.error = rec.traceback = None
            rec.progress = rec.progress_message = None
            rec.seq = next(self._seq)
            self._schedule(rec, now)
            outcomes.append(RequeueOutcome.REQUEUED)
        return outcomes

    async def purge_tasks(self, queue: str, status: TaskStatus, limit: int) -> int:
        """Delete up to ``limit`` records of the queue in that state (never running ones)."""
        self._check()
        if status is TaskStatus.RUNNING:
            return 0
        doomed = [
            task_id
            for task_id, rec in self._tasks.items()
            if rec.status is status and rec.task.queue == queue
        ][:limit]
        for task_id in doomed:
            del self._tasks[task_id]
        return len(doomed)

    async def save_progress(self, updates: Sequence[Progress]) -> None:
        """Store progress on records whose claim is current."""
        self._check()
        for update in updates:
            rec = self._current(update.claim)
            if rec is not None:
                rec.progress, rec.progress_message = update.value, update.message

    async def put_worker(self, record: WorkerRecord) -> None:
        """Keep the record."""
        self._check()
        self._workers[record.worker_id] = record

    async def remove_worker(self, worker_id: str) -> None:
        """Forget the record."""
        self._check()
        self._workers.pop(worker_id, None)

    async def list_workers(self, now: float) -> list[WorkerRecord]:
        """The records not yet expired."""
        self._check()
        for worker_id in [w for w, r in self._workers.items() if r.expires_at <= now]:
            del self._workers[worker_id]
        return sorted(self._workers.values(), key=lambda r: r.worker_id)

    # -- moving tasks between stores --------------------------------------------------

    async def hold(self, queues: Sequence[str], limit: int, holder: str) -> list[HeldTask]:
        """Hold the tasks ``holder`` already holds, then pending ones in claim order."""
        self._check()
        now = self._clock()
        wanted = set(queues)
        mine = [
            r for r in self._running.values() if r.worker_id == holder and r.task.queue in wanted
        ]
        pending = sorted(
            (
                r
                for r in self._tasks.values()
                if r.status is TaskStatus.PENDING
                and r.task.queue in wanted
                and (r.expires_at is None or r.expires_at > now)
            ),
            key=_list_key,
        )
        held = []
        for rec in [*mine, *pending][:limit]:
            rec.status = TaskStatus.RUNNING
            rec.fence += 1
            rec.lease_until = MAX_ETA_TIMESTAMP
            rec.worker_id = holder
            rec.started_at = now
            self._running[rec.task.id] = rec
            assert rec.payload is not None
            task = replace(rec.task, eta=rec.eta, payload=rec.payload, fresh_id=False)
            record = StoredTask(task, rec.attempts, rec.retries, rec.error, rec.traceback)
            held.append(HeldTask(record, ClaimRef(rec.task.id, rec.fence)))
        return held

    async def put_stored(self, records: Sequence[StoredTask]) -> list[bool]:
        """Store each record as a pending task, as it was; an id still known is left alone."""
        self._check()
        now = self._clock()
        stored: list[bool] = []
        for item in records:
            task = item.task
            if self._live(task.id, now) is not None:
                stored.append(False)
                continue
            rec = _Record(
                task=task,
                seq=next(self._seq),
                eta=task.eta,
                payload=task.payload,
                attempts=item.attempts,
                retries=item.retries,
                error=item.error,
                traceback=item.traceback,
            )
            self._tasks[task.id] = rec
            self._schedule(rec, now)
            stored.append(True)
        return stored

    async def drop_held(self, refs: Sequence[ClaimRef]) -> list[bool]:
        """Delete the records still held under these claims."""
        self._check()
        dropped = []
        for ref in refs:
            rec = self._current(ref)
            if rec is None:
                dropped.append(False)
                continue
            del self._running[ref.task_id]
            del self._tasks[ref.task_id]
            dropped.append(True)
        return dropped

    # -- cron -----------------------------------------------------------------------------

    async def put_cron(self, name: str, definition: bytes, start: float) -> None:
        """Create the schedule, or replace its definition keeping its last tick."""
        self._check()
        old = self._crons.get(name)
        last_tick = start if old is None else old.last_tick
        self._crons[name] = CronRecord(name, definition, last_tick)

    async def delete_cron(self, name: str) -> bool:
        """Remove the schedule."""
        self._check()
        return self._crons.pop(name, None) is not None

    async def list_crons(self) -> list[CronRecord]:
        """Every schedule, by name."""
        self._check()
        return [self._crons[name] for name in sorted(self._crons)]

    async def advance_cron(self, name: str, expected: float, tick: float) -> bool:
        """Compare-and-set the schedule's last tick."""
        self._check()
        old = self._crons.get(name)
        if old is None or old.last_tick != expected:
            return False
        self._crons[name] = CronRecord(name, old.definition, tick)
        return True

    # -- locks ----------------------------------------------------------------------------

    async def acquire_lock(self, name: str, token: str, ttl: float) -> bool:
        """Take the lock if it is free or its holder's TTL ran out."""
        self._check()
        now = self._clock()
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return False
        self._locks[name] = (token, now + ttl)
        return True

    async def acquire_any_lock(
        self, names: Sequence[str], token: str, ttl: float
    ) -> tuple[str | None, float]:
        """Take the first of the locks that is free or whose holder's TTL ran out."""
        self._check()
        now = self._clock()
        first = math.inf
        for name in names:
            held = self._locks.get(name)
            if held is None or held[1] <= now:
                self._locks[name] = (token, now + ttl)
                return name, 0.0
            first = min(first, held[1])
        return None, max(first - now, 0.0)

    async def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Extend the lock if ``token`` holds it."""
        self._check()
        now = self._clock()
        held = self._locks.get(name)
        if held is None or held[0] != token or held[1] <= now:
            return False
        self._locks[name] = (token, now + ttl)
        return True

    async def release_lock(self, name: str, token: str) -> bool:
        """Release the lock if ``token`` holds it."""
        self._check()
        held = self._locks.get(name)
        if held is None or held[0] != token:
            return False
        del self._locks[name]
        return held[1] > self._clock()


_REQUEUABLE = frozenset({TaskStatus.FAILED, TaskStatus.CANCELLED})


def _list_key(rec: _Record) -> tuple[float, ...]:
    """Where a record stands in the listing order of its status (see ``Backend.list_tasks``)."""
    if rec.status is TaskStatus.PENDING:
        return (-rec.task.priority, rec.eta, rec.seq)
    if rec.status is TaskStatus.RUNNING:
        return (rec.started_at or 0.0, rec.seq)
    return (-(rec.finished_at or 0.0), -rec.seq)


def _snapshot(rec: _Record, value: bytes | None) -> TaskSnapshot:
    running = rec.status is TaskStatus.RUNNING
    return TaskSnapshot(
        task_id=rec.task.id,
        queue=rec.task.queue,
        status=rec.status,
        attempts=rec.attempts,
        enqueued_at=rec.task.enqueued_at,
        eta=rec.eta,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        value=value,
        error=rec.error,
        traceback=rec.traceback,
        function=rec.task.function,
        priority=rec.task.priority,
        progress=rec.progress if running else None,
        progress_message=rec.progress_message if running else None,
        worker_id=rec.worker_id if running else None,
    )
