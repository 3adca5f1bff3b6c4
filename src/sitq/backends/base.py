"""The backend interface: the storage steps every backend implements.

A backend stores tasks and hands them out; it never decides anything about retries, backoff,
timeouts or cron. Each method is one step with one guarantee, stated in its docstring. The
conformance suite (``tests/conformance``) checks those guarantees on every backend.

Times are POSIX timestamps. A backend measures leases with its own clock (the server's clock for
a server backend), so workers on machines with skewed clocks still agree on who holds a task.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Self

from sitq.backends._waiting import Polls, wait_for_final
from sitq.errors import ConfigurationError
from sitq.models import (
    CancelOutcome,
    Claim,
    ClaimRef,
    CronRecord,
    HeldTask,
    LeaseState,
    NewTask,
    Progress,
    QueueStats,
    ReplaceOutcome,
    RequeueOutcome,
    Settlement,
    SnapshotPage,
    StoredTask,
    TaskSnapshot,
    TaskStatus,
    WorkerRecord,
)


class Backend(abc.ABC):
    """Stores tasks and hands them out. Subclass it to add a store; see the module docstring."""

    scheme: ClassVar[tuple[str, ...]] = ()
    """The URL schemes that name this backend; ``backend_from_url`` finds a backend by them."""

    @classmethod
    def from_url(cls, url: str) -> Self:
        """The backend a URL of one of its ``scheme`` names; options travel as query
        parameters. A backend without a URL form refuses."""
        raise ConfigurationError(f"{cls.__name__} cannot be made from a URL ({url!r})")

    # -- lifecycle ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections and create what the store needs. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close connections and wake every waiter. Idempotent."""

    def detach(self) -> None:
        """Drop every connection opened on an event loop that has ended, without any I/O (that
        loop can no longer run it), so that the next ``connect()`` opens new ones on the
        current loop. Backends that hold loop-bound connections override this."""
        raise ConfigurationError(
            f"{type(self).__name__} was connected on an event loop that has ended and cannot "
            "move to a new one: close it on the loop that connected it, or make a new backend"
        )

    async def connect_here(self) -> bool:
        """Connect unless already connected on the running event loop; a connection left by an
        event loop that has ended (an earlier ``asyncio.run``) is dropped first. ``True`` if
        this call connected."""
        loop = asyncio.get_running_loop()
        bound = self._bound_loop
        if self.connected and bound is not None and bound is not loop and bound.is_closed():
            self.detach()
        if self.connected:
            self._bound_loop = self._bound_loop or loop
            return False
        await self.connect()
        self._bound_loop = loop
        return True

    async def close_here(self) -> None:
        """``close()``, or ``detach()`` when the connection belongs to an event loop that has
        ended (it cannot be closed from another loop)."""
        bound = self._bound_loop
        if bound is not None and bound is not asyncio.get_running_loop() and bound.is_closed():
            if self.connected:
                self.detach()
            return
        await self.close()

    _bound_loop: asyncio.AbstractEventLoop | None = None

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""

    # -- tasks ----------------------------------------------------------------------------------

    @abc.abstractmethod
    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store tasks as pending, all in one step where the store allows (with each task's
        ``function``, for listings).

        Guarantee: when this returns, the tasks are durable. A task whose id the backend still
        knows (pending, running, or finished with an unexpired result) is left as it is; the
        returned list says, per task, whether it was newly stored.
        """

    async def enqueue_in_transaction(self, tasks: Sequence[NewTask], connection: Any) -> list[bool]:
        """Store tasks through the caller's own connection, inside the caller's transaction, so
        they exist if and only if that transaction commits. Only some backends can."""
        raise ConfigurationError(
            f"{type(self).__name__} cannot enqueue inside your own transaction: "
            "options(connection=...) works with PostgresBackend"
        )

    async def enqueue_replacing(self, task: NewTask) -> ReplaceOutcome:
        """Store ``task`` (an explicit id) as pending, or replace what its id holds, in one
        atomic step against claims, settlements, cancels, requeues and other enqueues.

        What the id holds decides, and the outcome says which it was: unknown, or a result that
        has expired: stored as new; pending (not claimed): its payload, options, priority,
        concurrency key, ``function`` and ``result_ttl`` replaced and its ETA set to
        ``task.eta``, its enqueue time kept; finished with its record kept: the record replaced
        by the task as a new enqueue (attempts and retries from 0, result, error and progress
        cleared), with its fencing token going on from where it was, so a claim of an earlier
        life can never settle the new one; running: nothing changes. An id stored on another
        queue than ``task.queue`` is left as it is (``OTHER_QUEUE``), whatever its state.

        Guarantee: once this returns a replacement, no claim hands out the replaced payload;
        a claim that won the race first is reported as ``RUNNING`` and the new payload is
        dropped. Durable when it returns, as ``enqueue``.
        """
        raise ConfigurationError(
            f"{type(self).__name__} cannot replace a pending task (debounce): use one of "
            "sitq's backends"
        )

    @abc.abstractmethod
    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Hand out up to ``limit`` due tasks from ``queues``, each under a new claim.

        A task is due when it is pending with ``eta <= now``, or running with an expired lease
        (its worker was lost). Order: higher priority first, then earlier ETA, then enqueue
        order. Each claim atomically sets the task running, increments ``attempts``, sets a new
        fencing token and a lease of ``lease`` seconds. Guarantee: no task is handed out twice
        while a lease on it holds.

        Concurrency keys: a task with a ``concurrency_key`` is handed out only while fewer than
        its ``concurrency_limit`` tasks of the same queue and key are running under a lease that
        has not expired, counting the ones this call hands out; otherwise it stays pending and
        does not hold back the tasks behind it. The check and the claim are one atomic step
        across every worker.
        """

    @abc.abstractmethod
    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Extend each current claim's lease to ``now + lease``; report per claim what it found.

        A claim whose token is no longer current is ``LOST`` and is not extended; so is a claim
        of a task with a concurrency key whose lease has already run out (its slot may belong to
        another task by now, and reviving it would exceed the key's limit).
        """

    @abc.abstractmethod
    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Record outcomes of claims (finish, reschedule, release), fenced, in one step.

        Each settlement applies only if its fencing token is the task's current claim and the
        task is running; the returned list says which applied. A finished task keeps its result
        until ``expires_at``; a succeeded task's payload may be dropped, a failed or cancelled
        one's is kept (``requeue`` runs it again). One call never holds two
        settlements of the same task. Settling a task that has
        a concurrency key frees its slot: workers waiting for work on its queue are woken.
        """

    @abc.abstractmethod
    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Cancel a pending task (it finishes as ``cancelled``, its result and payload kept for
        its ``result_ttl``), or flag a running one so its worker stops it."""

    @abc.abstractmethod
    async def get_task(self, task_id: str) -> TaskSnapshot | None:
        """The task's current state, or ``None`` if unknown or its result has expired.

        The snapshot carries the ``function`` and ``priority`` stored at enqueue and, while the
        task runs, the ``worker_id`` that claimed it and its last saved progress."""

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Wait up to ``timeout`` seconds for the task to finish; return its final snapshot.

        Returns ``None`` if it has not finished in time, or the snapshot of an unknown task as
        ``None`` at once. Backends that can push override this; the default polls with a
        growing interval, never a busy loop.
        """
        return await wait_for_final(
            lambda: self.get_task(task_id), timeout, polls=Polls.growing(0.005, 0.5)
        )

    @abc.abstractmethod
    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a task on ``queues`` may have become due, or ``timeout`` passes.

        Returning early without work is allowed (the worker then claims and finds nothing);
        returning late is not: a scheduled task's ETA must end the wait. Never a busy loop.
        """

    @abc.abstractmethod
    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Remove up to ``limit`` finished tasks whose results expired by ``now``; the count."""

    @abc.abstractmethod
    async def stats(self, now: float) -> list[QueueStats]:
        """Per-queue counts of tasks by state, sorted by queue name."""

    # -- inspection and operator actions -----------------------------------------------------

    @abc.abstractmethod
    async def list_tasks(
        self, status: TaskStatus, queue: str | None, limit: int, after: str | None, now: float
    ) -> SnapshotPage:
        """Up to ``limit`` tasks in ``status`` (of ``queue``, or of every queue), after the
        position ``after`` a previous page returned (``None``: from the start).

        Order: pending tasks (scheduled ones included) as workers would take them: priority
        high to low, then due time, then enqueue order; running tasks by ``started_at``,
        longest running first; finished tasks by ``finished_at``, most recent first. Results
        whose ``expires_at`` has passed are left out. Snapshots carry no ``value``.

        Guarantees: a page is read through an index, at a cost that does not grow with the
        number of tasks stored; following the positions lists a task that stays in ``status``
        throughout at most once, and does not miss it. Never reads a payload.
        """

    @abc.abstractmethod
    async def requeue(self, task_ids: Sequence[str], now: float) -> list[RequeueOutcome]:
        """Make each failed or cancelled task pending again, due ``now``: same id, payload and
        options; attempts and retries from 0; error, result, progress and expiry cleared.

        Guarantee: atomic per task against a worker, a cancel or another requeue (a task is
        requeued once however many callers race). Pending, running and succeeded tasks are
        refused; so is one whose payload is gone.
        """

    @abc.abstractmethod
    async def purge_tasks(self, queue: str, status: TaskStatus, limit: int) -> int:
        """Remove up to ``limit`` tasks of ``queue`` in ``status``; the count removed.

        Pending includes scheduled tasks. ``status`` is never ``running``: a running task is
        never purged. A purged task is gone (``get_task`` returns ``None``); the caller repeats
        until the count is 0.
        """

    @abc.abstractmethod
    async def save_progress(self, updates: Sequence[Progress]) -> None:
        """Store each running task's latest progress, if its claim is still current (a stale
        claim's progress is dropped)."""

    @abc.abstractmethod
    async def put_worker(self, record: WorkerRecord) -> None:
        """Create or replace a worker's record (its heartbeat)."""

    @abc.abstractmethod
    async def remove_worker(self, worker_id: str) -> None:
        """Remove a worker's record (it stopped)."""

    @abc.abstractmethod
    async def list_workers(self, now: float) -> list[WorkerRecord]:
        """The worker records that have not expired by ``now``, sorted by worker id."""

    # -- moving tasks between stores ------------------------------------------------------

    async def hold(self, queues: Sequence[str], limit: int, holder: str) -> list[HeldTask]:
        """Take up to ``limit`` tasks of ``queues`` out of every worker's reach, for moving
        them to another store: first those already running under ``holder``, then pending ones
        (scheduled ones included), in claim order.

        Each one becomes running under a new claim by ``holder`` (its ``worker_id``) whose
        lease ends at ``MAX_ETA_TIMESTAMP``: no worker claims it, and it stays held until
        ``drop_held`` removes it. Its ``eta``, ``priority``, ``attempts``, ``retries``, error,
        payload and options are left as they were and returned as stored. Atomic per task
        against a worker's claim: a task is either claimed by a worker or held, never both.
        """
        raise ConfigurationError(f"{type(self).__name__} cannot move tasks to another store")

    async def put_stored(self, records: Sequence[StoredTask]) -> list[bool]:
        """Store records taken from another store as pending tasks, each as it was: its id,
        ``eta``, ``priority``, ``enqueued_at``, ``attempts``, ``retries``, last error, payload
        and options. Like ``enqueue``: durable when it returns, and a task whose id the backend
        still knows is left as it is; the returned list says which were newly stored."""
        raise ConfigurationError(f"{type(self).__name__} cannot move tasks to another store")

    async def drop_held(self, refs: Sequence[ClaimRef]) -> list[bool]:
        """Remove the tasks still held (see ``hold``) under these claims, for good, in one step
        where the store allows; a task whose claim is no longer current is left alone. The
        returned list says which were removed."""
        raise ConfigurationError(f"{type(self).__name__} cannot move tasks to another store")

    # -- cron -----------------------------------------------------------------------------------

    async def put_cron(self, name: str, definition: bytes, start: float) -> None:
        """Store the cron schedule ``name``: create it with ``last_tick = start``, or replace the
        definition of an existing one and keep its ``last_tick``. Durable when it returns."""
        raise ConfigurationError(f"{type(self).__name__} does not store cron schedules")

    async def delete_cron(self, name: str) -> bool:
        """Remove the cron schedule ``name``; ``True`` if it existed."""
        raise ConfigurationError(f"{type(self).__name__} does not store cron schedules")

    async def list_crons(self) -> list[CronRecord]:
        """Every stored cron schedule, sorted by name."""
        raise ConfigurationError(f"{type(self).__name__} does not store cron schedules")

    async def advance_cron(self, name: str, expected: float, tick: float) -> bool:
        """Set the schedule's ``last_tick`` to ``tick`` if it is still ``expected``.

        Guarantee: a compare-and-set, atomic across every worker: of several workers advancing
        from the same ``expected``, exactly one gets ``True``. ``False`` if the schedule is gone.
        """
        raise ConfigurationError(f"{type(self).__name__} does not store cron schedules")

    # -- locks ----------------------------------------------------------------------------------

    async def acquire_lock(self, name: str, token: str, ttl: float) -> bool:
        """Take the lock ``name`` for ``token`` for ``ttl`` seconds if nobody holds it (or its
        holder's TTL has run out); ``True`` if taken. Atomic across every client; never waits."""
        raise ConfigurationError(f"{type(self).__name__} does not provide locks")

    async def acquire_any_lock(
        self, names: Sequence[str], token: str, ttl: float
    ) -> tuple[str | None, float]:
        """Take for ``token`` for ``ttl`` seconds the first of the locks ``names``, in their
        order, that nobody holds (or whose holder's TTL has run out), as ``acquire_lock``
        would: ``(name, 0.0)``. When every one is held: ``(None, wait)``, ``wait`` being the
        seconds until the first of them frees, by the backend's own clock.

        Atomic across every client for each lock (of racing clients, one takes a free lock);
        takes at most one lock per call; never waits. ``names`` are distinct lock names."""
        raise ConfigurationError(f"{type(self).__name__} does not provide locks")

    async def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Extend the lock to ``now + ttl`` if ``token`` still holds it; ``True`` if it did."""
        raise ConfigurationError(f"{type(self).__name__} does not provide locks")

    async def release_lock(self, name: str, token: str) -> bool:
        """Release the lock if ``token`` still holds it; ``True`` if it did. Never releases a
        lock another token holds."""
        raise ConfigurationError(f"{type(self).__name__} does not provide locks")

    def describe(self) -> str:
        """Where this backend points, for logs and ``sitq info``, never with a password."""
        return type(self).__name__


STATUS_CODE: dict[TaskStatus, int] = {
    TaskStatus.PENDING: 0,
    TaskStatus.RUNNING: 1,
    TaskStatus.SUCCESS: 2,
    TaskStatus.FAILED: 3,
    TaskStatus.CANCELLED: 4,
}
"""The number the SQLite, PostgreSQL and Redis backends store for each status (Redis as its
ASCII digit). Part of their stored formats, and written out in their SQL and Lua too: never
renumber."""
CODE_STATUS: dict[int, TaskStatus] = {code: status for status, code in STATUS_CODE.items()}
"""The status each stored code stands for (see ``STATUS_CODE``)."""


_STATS_FIELD = {
    TaskStatus.RUNNING: "running",
    TaskStatus.SUCCESS: "succeeded",
    TaskStatus.FAILED: "failed",
    TaskStatus.CANCELLED: "cancelled",
}


def stats_kind(status: TaskStatus, scheduled: bool) -> str:
    """The QueueStats field a task counts in (a pending task with a future ETA is scheduled)."""
    if status is TaskStatus.PENDING:
        return "scheduled" if scheduled else "pending"
    return _STATS_FIELD[status]


def stats_from_counts(rows: Iterable[tuple[str, str, int]]) -> list[QueueStats]:
    """Per-queue stats from ``(queue, kind, count)`` rows, ``kind`` naming a QueueStats field."""
    counts: dict[str, dict[str, int]] = {}
    for queue, kind, n in rows:
        c = counts.setdefault(queue, {})
        c[kind] = c.get(kind, 0) + n
    return [QueueStats(queue=q, **c) for q, c in sorted(counts.items())]
