"""Records that cross the line between the engine and a backend, and the public result types.

Times inside records are POSIX timestamps (``float`` seconds, UTC); the public :class:`Result`
turns them into timezone-aware datetimes.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

MAX_ETA = datetime.max.replace(tzinfo=UTC)
"""The latest ETA a task can have, 9999-12-31 23:59:59.999999 UTC: the last moment a Python
datetime holds, so every task's ETA can be read back as one. Later ones are refused at enqueue."""

MAX_ETA_TIMESTAMP = math.nextafter(MAX_ETA.timestamp(), 0.0)
"""``MAX_ETA`` as a POSIX timestamp: the largest float that still converts back to a datetime."""

MAX_ETA_TEXT = "9999-12-31 23:59:59.999999 UTC"
"""``MAX_ETA`` as error messages show it."""


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. ``str(status)`` is the bare value (``"success"``)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """True for ``success``, ``failed`` and ``cancelled``."""
        return self in _FINAL


_FINAL = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED})


R_co = TypeVar("R_co", covariant=True)


class TaskId(str, Generic[R_co]):
    """A task id, as ``enqueue``, ``enqueue_at`` and ``enqueue_in`` return it: a ``str`` in all
    but its class, whose type parameter records what the task function returns, for a type
    checker.

    ``await queue.enqueue(add, 1, 2)`` with ``def add(a: int, b: int) -> int`` is a
    ``TaskId[int]``, and ``await queue.get_value(task_id)`` is then an ``int`` (the awaited
    value for a coroutine function). At run time the parameter is not kept: a ``TaskId`` is
    equal to, hashes as, formats and JSON-encodes as the same plain string, and pickles as a
    plain ``str``, so an id passed on as a task argument or stored anywhere is the same data
    as before. ``TaskId[int](text)`` types an id read from elsewhere; ``str(task_id)`` is the
    plain string. See docs/types.md.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # A pickled id is a plain str: unpickling it needs no sitq class.
        return (str, (str(self),))

    def __copy__(self) -> TaskId[R_co]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> TaskId[R_co]:
        return self


def to_datetime(ts: float | None) -> datetime | None:
    """A POSIX timestamp as an aware UTC datetime (``None`` stays ``None``, and so does a value
    that is not a timestamp, as a damaged record may hold)."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task as the engine hands it to ``Backend.enqueue``.

    ``payload`` is the serialized call and ``options`` the engine's own settings (JSON text); a
    backend stores both as they are and never reads them.
    """

    id: str
    queue: str
    payload: bytes
    options: str
    priority: int
    eta: float
    enqueued_at: float
    result_ttl: float
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    fresh_id: bool = False
    """True when sitq generated the id just now, so it cannot exist yet: a backend may skip
    the lookups that make enqueueing an explicit id idempotent."""
    function: str = ""
    """The callable's ``module.qualname``, recorded for listings (never used to run it)."""


@dataclass(frozen=True, slots=True)
class StoredTask:
    """A pending task's record as a backend stores it, for moving it to another store: the
    task as enqueued (``payload`` and ``options`` as stored bytes and text, never read) with
    its current ``eta``, and what its earlier attempts left (a task waiting for a retry has
    ``attempts`` and ``retries`` above 0 and its last ``error``)."""

    task: NewTask
    attempts: int = 0
    retries: int = 0
    error: str | None = None
    traceback: str | None = None

    def row(self) -> tuple[Any, ...]:
        """Its fields as one row, in the order the SQL backends' ``put_stored`` statements
        take them: id, queue, priority, eta, payload, options, enqueued_at, result_ttl,
        concurrency_key, concurrency_limit, function, attempts, retries, error, traceback."""
        t = self.task
        return (
            t.id,
            t.queue,
            t.priority,
            t.eta,
            t.payload,
            t.options,
            t.enqueued_at,
            t.result_ttl,
            t.concurrency_key,
            t.concurrency_limit,
            t.function,
            self.attempts,
            self.retries,
            self.error,
            self.traceback,
        )


@dataclass(frozen=True, slots=True)
class HeldTask:
    """A task ``Backend.hold`` took out of workers' reach: its record and the claim it is
    held under (``Backend.drop_held`` removes it by that claim)."""

    record: StoredTask
    ref: ClaimRef


@dataclass(frozen=True, slots=True)
class Claim:
    """A task handed to one worker, held until ``lease`` runs out unless extended.

    ``fencing_token`` changes with every claim of the task: a settlement or lease extension is
    accepted only with the token of the current claim. ``attempts`` counts every start, this one
    included; ``retries`` counts the attempts that ended in a reschedule.
    """

    task_id: str
    queue: str
    payload: bytes
    options: str
    priority: int
    fencing_token: int
    attempts: int
    retries: int
    enqueued_at: float
    started_at: float
    result_ttl: float
    cancel_requested: bool = False
    corrupt: str | None = None
    """Set by a backend that claimed a record it cannot read (fields missing or of the wrong
    type): what is wrong with it. The engine fails such a task with this, without running it."""
    function: str = ""
    """The ``function`` stored at enqueue (for logs and the task's context)."""

    @property
    def ref(self) -> ClaimRef:
        """The name of this claim, for settling it or extending its lease."""
        return ClaimRef(self.task_id, self.fencing_token)


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """Names one claim: the task and the fencing token it was claimed with."""

    task_id: str
    fencing_token: int


class LeaseState(enum.Enum):
    """What ``Backend.extend_lease`` found for one claim."""

    HELD = "held"
    """The claim is current and its lease was extended."""
    CANCEL_REQUESTED = "cancel_requested"
    """The claim is current (lease extended) but ``cancel`` was asked for the task."""
    LOST = "lost"
    """The claim is no longer current: its lease ran out and another worker may own the task."""


@dataclass(frozen=True, slots=True)
class Finish:
    """Record the final result of a claim (fenced)."""

    claim: ClaimRef
    status: TaskStatus
    value: bytes | None
    error: str | None
    traceback: str | None
    finished_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class Reschedule:
    """Put a claimed task back as pending, due at ``eta``, as a retry (fenced).

    The backend increments the task's ``retries`` and keeps ``error`` as its last error.
    """

    claim: ClaimRef
    eta: float
    error: str | None
    traceback: str | None


@dataclass(frozen=True, slots=True)
class Release:
    """Give a claimed task back without charging the attempt (fenced): due now, or ``delay``
    seconds from now.

    The backend decrements ``attempts``, since the attempt did not really happen. With a
    ``delay`` above 0 it sets the task's ETA to its own clock's now plus ``delay`` (the engine
    defers a task that waits for a rate limit's slot so); with 0 the ETA is left as it was.
    """

    claim: ClaimRef
    delay: float = 0.0


Settlement = Finish | Reschedule | Release


class CancelOutcome(enum.Enum):
    """What ``Backend.cancel`` did."""

    CANCELLED = "cancelled"
    """The task was pending and is now cancelled, with a ``cancelled`` result."""
    REQUESTED = "requested"
    """The task is running; its worker is asked to stop it."""
    ALREADY_FINISHED = "already_finished"
    """The task had already finished; nothing changed."""
    NOT_FOUND = "not_found"
    """No task with this id."""


@dataclass(frozen=True, slots=True)
class TaskSnapshot:
    """What a backend knows about one task at one moment."""

    task_id: str
    queue: str
    status: TaskStatus
    attempts: int
    enqueued_at: float
    eta: float
    started_at: float | None
    finished_at: float | None
    value: bytes | None
    error: str | None
    traceback: str | None
    function: str = ""
    priority: int = 0
    progress: float | None = None
    progress_message: str | None = None
    worker_id: str | None = None


class RequeueOutcome(enum.Enum):
    """What ``Backend.requeue`` did with one task."""

    REQUEUED = "requeued"
    """The task was failed or cancelled and is pending again, due now, attempts from 0."""
    REFUSED = "refused"
    """The task is pending, running or succeeded (or its payload is gone); nothing changed."""
    NOT_FOUND = "not_found"
    """No task with this id (or its record has expired)."""


class ReplaceOutcome(enum.Enum):
    """What ``Backend.enqueue_replacing`` found under the task's id, and so what it did."""

    STORED = "stored"
    """The id was unknown (or its result had expired): the task is stored as new."""
    REPLACED_PENDING = "replaced_pending"
    """The id was pending (not claimed): its payload, options, priority and ETA are replaced."""
    REPLACED_FINISHED = "replaced_finished"
    """The id had finished, its record still kept: the record is replaced by the new task,
    pending, with attempts, retries and the old result cleared (the fencing token goes on)."""
    RUNNING = "running"
    """The id is running (claimed): nothing changed."""
    OTHER_QUEUE = "other_queue"
    """The id is stored on another queue: nothing changed."""


@dataclass(frozen=True, slots=True)
class Progress:
    """A running task's latest progress, saved with its worker's heartbeat."""

    claim: ClaimRef
    value: float
    message: str | None


@dataclass(frozen=True, slots=True)
class SnapshotPage:
    """One page of ``Backend.list_tasks``: snapshots in listing order (without values), and
    the backend's position after the last of them (``None``: nothing follows)."""

    tasks: list[TaskSnapshot]
    after: str | None


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    """A worker's record as a backend stores it: ``data`` is the engine's JSON, which the
    backend never reads; the record is gone once ``expires_at`` has passed."""

    worker_id: str
    data: bytes
    expires_at: float


@dataclass(frozen=True, slots=True)
class Result:
    """The final outcome of a task.

    ``value`` holds the serialized return value (``bytes``) and is ``None`` unless ``status`` is
    ``"success"``; read it with ``queue.serializer.loads(result.value)`` or use
    ``queue.get_value``. ``error`` is one line (exception type and message) and ``traceback`` the
    worker's traceback, for failed tasks.
    """

    task_id: str
    status: TaskStatus
    value: bytes | None
    error: str | None
    traceback: str | None
    attempts: int
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_snapshot(cls, snap: TaskSnapshot) -> Result:
        """Build the result of a finished task from its snapshot."""
        return cls(
            task_id=snap.task_id,
            status=snap.status,
            value=snap.value if snap.status is TaskStatus.SUCCESS else None,
            error=snap.error,
            traceback=snap.traceback,
            attempts=snap.attempts,
            enqueued_at=to_datetime(snap.enqueued_at),
            started_at=to_datetime(snap.started_at),
            finished_at=to_datetime(snap.finished_at),
        )


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts of one queue's tasks by state, as ``sitq info`` prints them."""

    queue: str
    pending: int = 0
    scheduled: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0


@dataclass(frozen=True, slots=True)
class CronRecord:
    """A cron schedule as a backend stores it.

    ``definition`` is the engine's own encoding of the schedule (expression, time zone, the
    task to enqueue); a backend stores it as it is and never reads it. ``last_tick`` is the
    POSIX time of the last tick the schedule has been advanced past (whole seconds).
    """

    name: str
    definition: bytes
    last_tick: float


def _json_ready(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """What an operator sees of one task: never its arguments or return value (inspection
    never unpickles). Times are aware UTC datetimes.

    ``function`` is the callable's ``module.qualname`` as recorded at enqueue; ``progress``
    (0 to 1) and ``progress_message`` are what the task last reported with
    ``current_task().set_progress``; ``worker_id`` names the worker running it.
    """

    task_id: str
    queue: str
    status: TaskStatus
    function: str
    attempts: int
    priority: int
    enqueued_at: datetime | None
    eta: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    traceback: str | None
    progress: float | None
    progress_message: str | None
    worker_id: str | None

    @classmethod
    def from_snapshot(cls, snap: TaskSnapshot) -> TaskInfo:
        """The operator's view of a backend snapshot."""
        return cls(
            task_id=snap.task_id,
            queue=snap.queue,
            status=snap.status,
            function=snap.function,
            attempts=snap.attempts,
            priority=snap.priority,
            enqueued_at=to_datetime(snap.enqueued_at),
            eta=to_datetime(snap.eta),
            started_at=to_datetime(snap.started_at),
            finished_at=to_datetime(snap.finished_at),
            error=snap.error,
            traceback=snap.traceback,
            progress=snap.progress if snap.status is TaskStatus.RUNNING else None,
            progress_message=snap.progress_message if snap.status is TaskStatus.RUNNING else None,
            worker_id=snap.worker_id if snap.status is TaskStatus.RUNNING else None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, ready for ``json.dumps`` (times as ISO 8601 text)."""
        return {f.name: _json_ready(getattr(self, f.name)) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class TaskPage:
    """One page of ``TaskQueue.list_tasks``: ``next_cursor`` is ``None`` on the last page,
    otherwise pass it back as ``cursor=`` for the next one."""

    tasks: list[TaskInfo]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker as it last reported itself (with its heartbeat)."""

    worker_id: str
    hostname: str
    pid: int
    kind: str
    queues: tuple[str, ...]
    concurrency: int
    running: int
    processed: int
    failed: int
    started_at: datetime | None
    last_seen: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """The fields by name, ready for ``json.dumps`` (times as ISO 8601 text)."""
        return {f.name: _json_ready(getattr(self, f.name)) for f in fields(self)}
