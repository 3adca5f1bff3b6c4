"""``TaskQueue``: enqueue calls, read their results. The client side of sitq."""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, overload

from sitq import _operate
from sitq._task import check_signature, function_name
from sitq.backends import resolve_backend
from sitq.backends.base import Backend
from sitq.cron import MISFIRE_POLICIES, CronDefinition, CronExpression, CronInfo, check_cron_name
from sitq.errors import (
    BackendError,
    ConfigurationError,
    SerializationError,
    SitqError,
    TaskFailedError,
    TaskNotFound,
    check_clock,
    check_seconds,
)
from sitq.locks import Lock
from sitq.models import (
    MAX_ETA,
    MAX_ETA_TEXT,
    MAX_ETA_TIMESTAMP,
    CancelOutcome,
    NewTask,
    QueueStats,
    ReplaceOutcome,
    RequeueOutcome,
    Result,
    TaskId,
    TaskInfo,
    TaskPage,
    TaskSnapshot,
    TaskStatus,
    WorkerInfo,
)
from sitq.observe import tracing
from sitq.options import TaskOptions
from sitq.serializers import PickleSerializer, Serializer

DEFAULT_MAX_PAYLOAD = 1024 * 1024
"""Bytes a serialized task call may take, unless ``TaskQueue(max_payload=...)`` says otherwise."""

CallSpec = (
    tuple[Callable[..., Any], Sequence[Any]]
    | tuple[Callable[..., Any], Sequence[Any], dict[str, Any]]
)
"""One call for ``enqueue_many``: ``(func, args)`` or ``(func, args, kwargs)``."""

P = ParamSpec("P")
R = TypeVar("R")


def _plain_id(task_id: str) -> str:
    """The id as an exact ``str`` (a :class:`TaskId` is one in all but its class), so that a
    backend only ever sees plain strings."""
    return task_id if type(task_id) is str or not isinstance(task_id, str) else str(task_id)


def _to_timestamp(when: datetime) -> float:
    """The ETA ``when`` as a timestamp (a naive datetime is UTC); ``ConfigurationError`` for
    anything that is not a datetime or falls after ``MAX_ETA``."""
    if not isinstance(when, datetime):
        raise ConfigurationError(f"enqueue_at needs a datetime, not {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        when = when.replace(tzinfo=UTC)
    # Compared as datetimes: past MAX_ETA the timestamp's float can no longer tell them apart.
    if when > MAX_ETA:
        raise ConfigurationError(
            f"enqueue_at({when.isoformat(sep=' ')}) is after {MAX_ETA_TEXT}, the latest ETA a task "
            "can have: give an earlier datetime"
        )
    return min(when.timestamp(), MAX_ETA_TIMESTAMP)


@dataclass(frozen=True, slots=True)
class _Delay:
    """An ``enqueue_in`` delay, checked where it is given; the ETA counts from the queue's clock
    at the moment the task is stored."""

    seconds: float
    given: float | timedelta

    def eta(self, now: float) -> float:
        """``seconds`` after ``now``; ``ConfigurationError`` if that is after ``MAX_ETA``."""
        eta = now + self.seconds
        if eta > MAX_ETA_TIMESTAMP:
            raise ConfigurationError(
                f"enqueue_in({self.given!r}) would make the task due after {MAX_ETA_TEXT}, the "
                f"latest ETA a task can have: use a finite delay of at most "
                f"{MAX_ETA_TIMESTAMP - now:.0f} seconds"
            )
        return eta


def _eta_after(delay: float | timedelta) -> _Delay:
    """The delay ``delay`` (seconds or a timedelta) before a task is due; ``ConfigurationError``
    for a delay that is not a finite number >= 0 (one that ends after ``MAX_ETA`` is refused when
    the ETA is counted, before anything is stored)."""
    if isinstance(delay, timedelta):
        seconds = delay.total_seconds()
    elif isinstance(delay, int | float) and not isinstance(delay, bool):
        try:
            seconds = float(delay)
        except OverflowError:
            seconds = math.inf
    else:
        raise ConfigurationError(f"enqueue_in needs seconds or a timedelta, not {delay!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(
            f"enqueue_in needs a finite delay >= 0 seconds, not {delay!r} (to keep a task "
            "for later without running it, do not enqueue it yet)"
        )
    return _Delay(seconds, delay)


def _wait_seconds(timeout: float | None) -> float:
    if timeout is None:
        return 0.0
    return check_seconds("timeout", timeout, allow_zero=True, allow_inf=True)


class TaskOptionsView:
    """The ``enqueue*`` methods of a queue with some options set; from ``queue.options(...)``."""

    def __init__(self, queue: TaskQueue, options: TaskOptions, connection: Any = None) -> None:
        self._queue = queue
        self._options = options
        self._connection = connection

    @property
    def task_options(self) -> TaskOptions:
        """The options tasks enqueued through this view get."""
        return self._options

    def options(self, **options: Any) -> TaskOptionsView:
        """A view with more options set on top of these.

        ``connection=conn`` (PostgreSQL: an asyncpg or psycopg 3 connection) enqueues inside the
        caller's own transaction on that connection: the tasks exist only if it commits.
        """
        connection = options.pop("connection", self._connection)
        return TaskOptionsView(self._queue, self._options.merge(**options), connection)

    # Each enqueue has two typed forms: a function returning an awaitable (a coroutine
    # function) gives the id of what it resolves to, any other function the id of what it
    # returns. Either way a type checker checks the arguments against the function's
    # parameters (ParamSpec); _build checks them again at run time, for every caller.

    @overload
    async def enqueue(
        self, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    @overload
    async def enqueue(
        self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    async def enqueue(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskId[Any]:
        """Enqueue ``func(*args, **kwargs)`` to run now; return the task id.

        The id is a :class:`TaskId`, a ``str``; for a type checker it also carries the
        function's return type, which ``get_value`` then gives back.
        """
        return await self._queue._submit(self, [(func, args, kwargs)], None)

    @overload
    async def enqueue_at(
        self, when: datetime, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    @overload
    async def enqueue_at(
        self, when: datetime, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    async def enqueue_at(
        self, when: datetime, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskId[Any]:
        """Enqueue to run at ``when`` (a naive datetime means UTC); return the task id.

        ``when`` may be as late as ``sitq.models.MAX_ETA`` (9999-12-31 23:59:59.999999 UTC). A
        past ``when`` makes the task due at once, in its place among the tasks due now: it does
        not jump ahead of tasks enqueued before it.
        """
        return await self._queue._submit(self, [(func, args, kwargs)], _to_timestamp(when))

    @overload
    async def enqueue_in(
        self,
        delay: float | timedelta,
        func: Callable[P, Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskId[R]: ...

    @overload
    async def enqueue_in(
        self, delay: float | timedelta, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    async def enqueue_in(
        self, delay: float | timedelta, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskId[Any]:
        """Enqueue to run after ``delay`` (seconds or a timedelta); return the task id.

        ``delay`` is finite and >= 0, and must not carry the task past ``sitq.models.MAX_ETA``.
        """
        return await self._queue._submit(self, [(func, args, kwargs)], _eta_after(delay))

    async def add_cron(
        self,
        name: str,
        expression: str,
        func: Callable[..., Any],
        /,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timezone: str = "UTC",
        misfire: str = "once",
        **options: Any,
    ) -> None:
        """Store the schedule ``name``: enqueue ``func(*args, **kwargs)`` at every tick of
        ``expression``, evaluated in ``timezone`` (an IANA name).

        ``expression`` has 5 fields (minute hour day month weekday) or 6 with seconds first.
        ``misfire`` says what happens to ticks missed while no worker ran: ``"once"`` runs the
        last of them once, ``"skip"`` drops them. Other keyword arguments are task options
        (``queue``, ``priority``, ``retry``, ...). Adding a schedule that exists replaces it and
        keeps its place in time; running workers pick the change up within a second.
        """
        await self._queue._add_cron(
            self, name, expression, func, args, kwargs, timezone, misfire, options
        )

    async def enqueue_many(self, calls: Iterable[CallSpec]) -> list[str]:
        """Enqueue many calls, ``(func, args)`` or ``(func, args, kwargs)``, in one step.

        Returns the ids in order, as plain strings: calls given as tuples carry no types for a
        type checker to check or to pass on (``enqueue`` does both). With an explicit
        ``task_id`` option only one call is allowed.
        """
        normalized: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        for i, spec in enumerate(calls):
            if not isinstance(spec, tuple | list) or len(spec) not in (2, 3):
                raise ConfigurationError(
                    f"enqueue_many item {i} must be (func, args) or (func, args, kwargs), "
                    f"not {spec!r}"
                )
            func, args = spec[0], spec[1]
            kwargs = spec[2] if len(spec) == 3 else {}
            if not isinstance(args, tuple | list):
                raise ConfigurationError(f"enqueue_many item {i}: args must be a tuple or list")
            if not isinstance(kwargs, dict):
                raise ConfigurationError(f"enqueue_many item {i}: kwargs must be a dict")
            normalized.append((func, tuple(args), kwargs))
        if self._options.task_id is not None and len(normalized) > 1:
            raise ConfigurationError("task_id names one task: it cannot be used with many calls")
        return await self._queue._submit_many(self, normalized, None, batch=True)


class TaskQueue(TaskOptionsView):
    """Enqueue calls and read their results.

    ``backend`` is a backend object, a URL, or ``None`` for ``SQLiteBackend("sitq.db")``;
    ``serializer`` defaults to :class:`PickleSerializer`. ``max_payload`` bounds the size of one
    serialized call (bytes; :class:`SerializationError` at enqueue). ``clock`` is where the queue
    reads the time (POSIX seconds; ``time.time`` by default, ``sitq.testing`` gives a
    :class:`~sitq.testing.FakeClock`). Other keyword arguments are the default task options
    (``retry``, ``timeout``, ``priority``, ``result_ttl``, ...).
    """

    def __init__(
        self,
        backend: Backend | str | None = None,
        serializer: Serializer | None = None,
        *,
        queue: str = "default",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        clock: Callable[[], float] | None = None,
        **defaults: Any,
    ) -> None:
        self._clock = check_clock(clock)
        if isinstance(max_payload, bool) or not isinstance(max_payload, int) or max_payload < 1:
            raise ConfigurationError(
                f"max_payload must be a number of bytes >= 1, not {max_payload!r}"
            )
        self.max_payload = max_payload
        self.backend: Backend = resolve_backend(backend)
        self.serializer: Serializer = serializer if serializer is not None else PickleSerializer()
        if not isinstance(self.serializer, Serializer):
            raise ConfigurationError(
                f"serializer must be a sitq Serializer (PickleSerializer, JsonSerializer or a "
                f"subclass of Serializer), not {serializer!r}"
            )
        super().__init__(self, TaskOptions().merge(queue=queue, **defaults))

    # -- lifecycle --------------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect the backend. Idempotent; after the event loop it connected on has ended (an
        earlier ``asyncio.run``), it connects again on the running one."""
        await self.backend.connect_here()

    async def close(self) -> None:
        """Close the backend. Idempotent."""
        await self.backend.close_here()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- enqueueing -------------------------------------------------------------------------

    def _build(
        self,
        opts: TaskOptions,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        eta: float | None,
        now: float,
        trace: str | None = None,
    ) -> NewTask:
        if not callable(func):
            raise ConfigurationError(f"enqueue needs a callable as the task, not {func!r}")
        bad = check_signature(func, args, kwargs)
        if bad is not None:
            raise ConfigurationError(f"cannot enqueue: {bad}")
        payload = self.serializer.dumps_call(func, args, kwargs)
        if len(payload) > self.max_payload:
            raise SerializationError(
                f"the task's payload is {len(payload):,} bytes, over max_payload="
                f"{self.max_payload:,}: pass large data by reference (a file path, an object "
                "store key) or raise TaskQueue(max_payload=...) (NATS servers also have a "
                "max_payload, 1 MB by default)"
            )
        return NewTask(
            id=opts.task_id or str(uuid.uuid4()),
            queue=opts.queue,
            payload=payload,
            options=opts.engine_options(trace),
            priority=opts.priority,
            # A past ETA counts from the enqueue moment: tasks run in the order they became
            # due, which every backend (a NATS stream included) can keep.
            eta=now if eta is None or eta < now else eta,
            enqueued_at=now,
            result_ttl=opts.result_ttl,
            concurrency_key=opts.concurrency_key,
            concurrency_limit=opts.concurrency_limit,
            fresh_id=opts.task_id is None,
            function=function_name(func),
        )

    async def _add_cron(
        self,
        view: TaskOptionsView,
        name: str,
        expression: str,
        func: Callable[..., Any],
        args: Sequence[Any],
        kwargs: dict[str, Any] | None,
        timezone: str,
        misfire: str,
        options: dict[str, Any],
    ) -> None:
        check_cron_name(name)
        schedule = CronExpression(expression, timezone)
        if misfire not in MISFIRE_POLICIES:
            raise ConfigurationError(
                f"misfire={misfire!r} is not a policy: use one of {list(MISFIRE_POLICIES)}"
            )
        if not isinstance(args, tuple | list):
            raise ConfigurationError(f"add_cron args must be a tuple or list, not {args!r}")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise ConfigurationError(f"add_cron kwargs must be a dict, not {kwargs!r}")
        opts = view._options.merge(**options)
        if opts.debounce is not None:
            raise ConfigurationError(
                "add_cron cannot take debounce: each tick is a task of its own, with its own id"
            )
        if opts.task_id is not None:
            raise ConfigurationError(
                "add_cron cannot take task_id: each tick's id is derived from the schedule name "
                "and the tick time"
            )
        template = self._build(opts, func, tuple(args), dict(kwargs or {}), None, 0.0)
        definition = CronDefinition(
            expression=schedule,
            misfire=misfire,
            func=f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', repr(func))}",
            queue=template.queue,
            payload=template.payload,
            options=template.options,
            priority=template.priority,
            result_ttl=template.result_ttl,
            concurrency_key=template.concurrency_key,
            concurrency_limit=template.concurrency_limit,
        )
        await self.connect()
        await self.backend.put_cron(name, definition.encode(), float(math.floor(self._clock())))

    async def remove_cron(self, name: str) -> bool:
        """Delete the schedule ``name``; ``True`` if it existed. Ticks already enqueued stay."""
        check_cron_name(name)
        await self.connect()
        return await self.backend.delete_cron(name)

    async def list_crons(self) -> list[CronInfo]:
        """Every stored schedule, by name, with its last and next tick."""
        await self.connect()
        return [CronInfo.from_record(r) for r in await self.backend.list_crons()]

    def lock(self, name: str, ttl: float = 30.0, timeout: float = 10.0) -> Lock:
        """A distributed lock on this queue's backend: ``async with queue.lock("name"):``.

        Held by one holder at a time across every process and machine that shares the backend;
        extended while the block runs; freed ``ttl`` seconds after a holder dies.
        :class:`LockTimeout` if not acquired within ``timeout`` seconds.
        """
        return Lock(self, name, ttl, timeout)

    async def _submit(
        self,
        view: TaskOptionsView,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        eta: float | _Delay | None,
    ) -> TaskId[Any]:
        if isinstance(eta, _Delay):
            eta = eta.eta(self._clock())
        return TaskId((await self._submit_many(view, calls, eta))[0])

    async def _submit_many(
        self,
        view: TaskOptionsView,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        eta: float | None,
        batch: bool = False,
    ) -> list[str]:
        if not calls:
            return []
        send = tracing.sending(view._options.queue, len(calls), batch)
        if send is None:
            return await self._store(view, calls, eta, None)
        with send:
            ids = await self._store(view, calls, eta, send.trace)
            send.sent(ids, function_name(calls[0][0]))
            return ids

    async def _store(
        self,
        view: TaskOptionsView,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        eta: float | None,
        trace: str | None,
    ) -> list[str]:
        if view._options.debounce is not None:
            return [await self._debounce(view, calls, eta, trace)]
        now = self._clock()
        tasks = [self._build(view._options, f, a, k, eta, now, trace) for f, a, k in calls]
        await self.connect()
        if view._connection is not None:
            await self.backend.enqueue_in_transaction(tasks, view._connection)
        else:
            await self.backend.enqueue(tasks)
        return [t.id for t in tasks]

    async def _debounce(
        self,
        view: TaskOptionsView,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        eta: float | None,
        trace: str | None,
    ) -> str:
        """Store one call under its explicit id, due ``debounce`` seconds from now, replacing
        the call its id holds while that one is pending (or has finished); see docs/contract.md,
        Debounce. A call that finds its id running is dropped."""
        opts = view._options
        assert opts.debounce is not None
        if opts.task_id is None:
            raise ConfigurationError(
                f"debounce={opts.debounce!r} needs an explicit task_id, the id every call of a "
                "burst shares: queue.options(task_id='reindex:42', "
                f"debounce={opts.debounce!r}).enqueue(...)"
            )
        if eta is not None:
            raise ConfigurationError(
                "debounce sets the task's ETA itself (now + debounce): use enqueue, not "
                "enqueue_at or enqueue_in"
            )
        if view._connection is not None:
            raise ConfigurationError(
                "debounce cannot be combined with options(connection=...): a debounced call "
                "replaces a stored task, which is not part of your transaction"
            )
        (func, args, kwargs) = calls[0]
        now = self._clock()
        if now + opts.debounce > MAX_ETA_TIMESTAMP:
            raise ConfigurationError(
                f"debounce={opts.debounce!r} would make the task due after {MAX_ETA_TEXT}, the "
                "latest ETA a task can have: use fewer seconds"
            )
        task = self._build(opts, func, args, kwargs, now + opts.debounce, now, trace)
        await self.connect()
        outcome = await self.backend.enqueue_replacing(task)
        if outcome is ReplaceOutcome.OTHER_QUEUE:
            raise ConfigurationError(
                f"task {task.id!r} is stored on another queue than {task.queue!r}: a debounced "
                "id stays on the queue it was first enqueued on until its record expires or is "
                "purged; enqueue it there"
            )
        return task.id

    # -- results ----------------------------------------------------------------------------

    async def get_result(self, task_id: str, timeout: float | None = None) -> Result | None:
        """The task's :class:`Result`, waiting up to ``timeout`` seconds for it to finish.

        ``None`` if it has not finished in time (``timeout=None`` or ``0``: do not wait).
        Raises :class:`TaskNotFound` for an id the backend does not know.
        """
        wait = _wait_seconds(timeout)
        await self.connect()
        snap = await self._read(task_id, wait)
        if snap is None:
            raise TaskNotFound(task_id)
        return Result.from_snapshot(snap) if snap.status.is_final else None

    @overload
    async def get_value(self, task_id: TaskId[R], timeout: float | None = None) -> R: ...

    @overload
    async def get_value(self, task_id: str, timeout: float | None = None) -> Any: ...

    async def get_value(self, task_id: str, timeout: float | None = None) -> Any:
        """The task's deserialized return value, waiting up to ``timeout`` seconds.

        For a type checker, the value of a ``TaskId[R]`` (as ``enqueue`` returns it) is an
        ``R``; of a plain ``str`` id, ``Any``.

        Raises :class:`TaskFailedError` if it failed or was cancelled, ``TimeoutError`` if it
        has not finished in time, :class:`TaskNotFound` for an unknown id.
        """
        result = await self.get_result(task_id, timeout)
        if result is None:
            raise TimeoutError(f"task {task_id} has not finished within {timeout} s")
        if result.status is not TaskStatus.SUCCESS:
            raise TaskFailedError(task_id, result.status, result.error, result.traceback)
        assert result.value is not None
        return self.serializer.loads(result.value)

    async def get_status(self, task_id: str) -> TaskStatus | None:
        """The task's :class:`TaskStatus`, or ``None`` for an unknown id."""
        await self.connect()
        snap = await self._read(task_id, 0.0)
        return None if snap is None else snap.status

    async def _read(self, task_id: str, wait: float) -> TaskSnapshot | None:
        """The task's snapshot; a stored record the backend cannot decode (damaged, or written
        by something else) is a :class:`BackendError` naming the task."""
        task_id = _plain_id(task_id)
        try:
            if wait > 0:
                return await self.backend.wait_for_result(task_id, wait)
            return await self.backend.get_task(task_id)
        except SitqError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(
                f"the stored record of task {task_id!r} cannot be read ({type(exc).__name__}: "
                f"{exc})"
            ) from exc

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task: ``True`` if it was pending (now cancelled) or running (asked to
        stop), ``False`` if it had already finished. Raises :class:`TaskNotFound`."""
        await self.connect()
        outcome = await self.backend.cancel(_plain_id(task_id), self._clock())
        if outcome is CancelOutcome.NOT_FOUND:
            raise TaskNotFound(task_id)
        return outcome is not CancelOutcome.ALREADY_FINISHED

    # -- operating ------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> TaskInfo | None:
        """What an operator sees of a task (:class:`TaskInfo`: status, function, attempts,
        times, error and traceback, progress, worker), or ``None`` for an unknown or expired
        id. Never reads the task's arguments or result."""
        await self.connect()
        snap = await self._read(task_id, 0.0)
        return None if snap is None else TaskInfo.from_snapshot(snap)

    async def list_tasks(
        self,
        status: str | TaskStatus | Iterable[str | TaskStatus] | None = None,
        queue: str | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """One page of tasks: of one status, several or all (``None``), of one queue or all.

        Order: running tasks longest-running first, then pending ones as workers would take
        them, then failed, cancelled and successful ones, most recently finished first.
        ``limit`` is 1 to 1000; pass ``page.next_cursor`` back as ``cursor`` for the next page
        (``None`` on the last). A task that stays in its state is listed at most once across
        the pages, and not missed.
        """
        statuses = _operate.parse_statuses(status)
        name = _operate.check_queue_name(queue, required=False)
        size = _operate.check_limit(limit)
        if cursor is not None and not isinstance(cursor, str):
            raise ConfigurationError(f"cursor must be a string from next_cursor, not {cursor!r}")
        await self.connect()
        return await _operate.list_page(self.backend, statuses, name, size, cursor, self._clock())

    async def requeue(self, task_id: str) -> bool:
        """Run a failed or cancelled task again: ``True`` if it is pending again (same id,
        payload and options, attempts from 0, due now); ``False`` if it is pending, running or
        succeeded. Raises :class:`TaskNotFound` for an unknown or expired id."""
        await self.connect()
        (outcome,) = await self.backend.requeue([_plain_id(task_id)], self._clock())
        if outcome is RequeueOutcome.NOT_FOUND:
            raise TaskNotFound(task_id)
        return outcome is RequeueOutcome.REQUEUED

    async def requeue_many(self, status: str = "failed", queue: str | None = None) -> int:
        """Requeue every ``failed`` (or ``cancelled``) task, of one queue or all; the count.
        Pages through the tasks, so memory stays bounded however many there are."""
        if status not in ("failed", "cancelled"):
            raise ConfigurationError(
                f"requeue_many(status={status!r}): only failed or cancelled tasks can be requeued"
            )
        name = _operate.check_queue_name(queue, required=False)
        await self.connect()
        return await _operate.requeue_all(self.backend, TaskStatus(status), name, self._clock)

    async def purge(self, queue: str, status: str = "pending") -> int:
        """Remove the tasks of ``queue`` in one state: ``pending`` (scheduled included),
        ``failed``, ``cancelled``, ``success``, or ``finished`` (those three); the count.
        Running tasks are never purged (cancel them). A purged task's id is unknown after."""
        name = _operate.check_queue_name(queue, required=True)
        assert name is not None
        states = _operate.PURGE_STATES.get(status) if isinstance(status, str) else None
        if states is None:
            raise ConfigurationError(
                f"purge(status={status!r}): use one of {', '.join(_operate.PURGE_STATES)} "
                "(running tasks are never purged: cancel them)"
            )
        await self.connect()
        return await _operate.purge_all(self.backend, name, states)

    async def list_workers(self) -> list[WorkerInfo]:
        """The workers alive now, as each last reported itself, sorted by worker id."""
        await self.connect()
        records = await self.backend.list_workers(self._clock())
        return [info for r in records if (info := _operate.worker_info(r)) is not None]

    async def stats(self) -> list[QueueStats]:
        """Per-queue counts of pending, scheduled, running, succeeded and failed tasks."""
        await self.connect()
        return await self.backend.stats(self._clock())

    def __repr__(self) -> str:
        return f"TaskQueue({self.backend.describe()}, queue={self.task_options.queue!r})"
