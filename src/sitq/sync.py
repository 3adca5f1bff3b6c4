"""``SyncTaskQueue``: the blocking face of :class:`TaskQueue`, for code that is not async.

It runs one event loop in a background thread (the blocking-portal pattern) and hands every
call to it, so it also works where a loop is already running in the calling thread (a
notebook, an async web framework's sync view).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, overload

from sitq.backends.base import Backend
from sitq.backends.memory import MemoryBackend
from sitq.cron import CronInfo
from sitq.errors import ConfigurationError, SitqError
from sitq.locks import Lock
from sitq.models import QueueStats, Result, TaskId, TaskInfo, TaskPage, TaskStatus, WorkerInfo
from sitq.queue import CallSpec, TaskOptionsView, TaskQueue
from sitq.serializers import Serializer

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class _Portal:
    """An event loop running in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="sitq-sync", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise SitqError("SyncTaskQueue cannot be called from its own event loop thread")
        if self._loop.is_closed():
            coro.close()
            raise SitqError("SyncTaskQueue is closed")
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()


class SyncOptionsView:
    """The blocking ``enqueue*`` methods with some options set; from ``queue.options(...)``."""

    def __init__(
        self, portal_call: Callable[[Coroutine[Any, Any, Any]], Any], view: TaskOptionsView
    ) -> None:
        self._call = portal_call
        self._view = view

    def options(self, **options: Any) -> SyncOptionsView:
        """A view with more options set on top of these."""
        return SyncOptionsView(self._call, self._view.options(**options))

    @overload
    def enqueue(
        self, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    @overload
    def enqueue(self, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> TaskId[R]: ...

    def enqueue(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskId[Any]:
        """Enqueue ``func(*args, **kwargs)``; return the task id (a :class:`~sitq.TaskId`,
        typed as :meth:`TaskQueue.enqueue`'s)."""
        return self._call(self._view.enqueue(func, *args, **kwargs))  # type: ignore[no-any-return]

    @overload
    def enqueue_at(
        self, when: datetime, func: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    @overload
    def enqueue_at(
        self, when: datetime, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    def enqueue_at(
        self, when: datetime, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskId[Any]:
        """Enqueue to run at ``when`` (naive means UTC); return the task id. The limits and
        the meaning of a past ``when`` are those of :meth:`TaskQueue.enqueue_at`."""
        return self._call(  # type: ignore[no-any-return]
            self._view.enqueue_at(when, func, *args, **kwargs)
        )

    @overload
    def enqueue_in(
        self,
        delay: float | timedelta,
        func: Callable[P, Awaitable[R]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskId[R]: ...

    @overload
    def enqueue_in(
        self, delay: float | timedelta, func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskId[R]: ...

    def enqueue_in(
        self, delay: float | timedelta, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskId[Any]:
        """Enqueue to run after ``delay`` (finite, >= 0); return the task id. See
        :meth:`TaskQueue.enqueue_in`."""
        return self._call(  # type: ignore[no-any-return]
            self._view.enqueue_in(delay, func, *args, **kwargs)
        )

    def enqueue_many(self, calls: Iterable[CallSpec]) -> list[str]:
        """Enqueue many calls in one step; return their ids."""
        return self._call(self._view.enqueue_many(list(calls)))  # type: ignore[no-any-return]

    def add_cron(
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
        """Store a cron schedule; see :meth:`TaskQueue.add_cron`."""
        self._call(
            self._view.add_cron(
                name,
                expression,
                func,
                args,
                kwargs,
                timezone=timezone,
                misfire=misfire,
                **options,
            )
        )


class SyncLock:
    """The blocking face of :class:`~sitq.locks.Lock`: ``with queue.lock("name"):``. The lock
    is extended from the background loop while the block runs."""

    def __init__(self, portal_call: Callable[[Coroutine[Any, Any, Any]], Any], lock: Lock) -> None:
        self._call = portal_call
        self._lock = lock

    @property
    def name(self) -> str:
        """The lock's name."""
        return self._lock.name

    @property
    def held(self) -> bool:
        """True while held and its last extension succeeded."""
        return self._lock.held

    def acquire(self) -> None:
        """Wait for the lock; :class:`~sitq.LockTimeout` if not acquired in time."""
        self._call(self._lock.acquire())

    def release(self) -> None:
        """Release the lock."""
        self._call(self._lock.release())

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class SyncTaskQueue(SyncOptionsView):
    """The same methods as :class:`TaskQueue`, blocking. Use it as a context manager, or call
    :meth:`close` when done.

    It takes no memory backend: that would keep the tasks on this queue's background event
    loop, where no worker can reach them. In tests, :class:`sitq.testing.SyncTestQueue` is the
    in-memory sync queue (its tasks run when ``sitq.testing.drain`` is called).
    """

    def __init__(
        self,
        backend: Backend | str | None = None,
        serializer: Serializer | None = None,
        *,
        queue: str = "default",
        **defaults: Any,
    ) -> None:
        self._queue = TaskQueue(backend, serializer, queue=queue, **defaults)
        if isinstance(self._queue.backend, MemoryBackend):
            raise ConfigurationError(
                "SyncTaskQueue cannot use a memory backend: its tasks would live on the "
                "queue's background event loop, where no worker can reach them, so they would "
                "never run. In tests, use sitq.testing.SyncTestQueue (its tasks run in your "
                "thread when you call sitq.testing.drain(queue)); elsewhere, a store that "
                "workers share, such as sqlite:///sitq.db"
            )
        self._portal: _Portal | None = _Portal()
        super().__init__(self._portal_call, self._queue)

    def _portal_call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._portal is None:
            coro.close()
            raise SitqError("SyncTaskQueue is closed")
        return self._portal.call(coro)

    @property
    def backend(self) -> Backend:
        """The backend (its methods are async: call them through a :class:`TaskQueue`)."""
        return self._queue.backend

    @property
    def serializer(self) -> Serializer:
        """The serializer; ``queue.serializer.loads(result.value)`` reads a result value."""
        return self._queue.serializer

    def connect(self) -> None:
        """Connect the backend. Idempotent."""
        self._portal_call(self._queue.connect())

    def close(self) -> None:
        """Close the backend and stop the background loop. Idempotent."""
        if self._portal is None:
            return
        try:
            self._portal.call(self._queue.close())
        finally:
            self._portal.stop()
            self._portal = None

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def get_result(self, task_id: str, timeout: float | None = None) -> Result | None:
        """The task's :class:`Result`, waiting up to ``timeout`` seconds."""
        return self._portal_call(self._queue.get_result(task_id, timeout))

    @overload
    def get_value(self, task_id: TaskId[R], timeout: float | None = None) -> R: ...

    @overload
    def get_value(self, task_id: str, timeout: float | None = None) -> Any: ...

    def get_value(self, task_id: str, timeout: float | None = None) -> Any:
        """The task's return value (typed ``R`` for a ``TaskId[R]``); see
        :meth:`TaskQueue.get_value`."""
        return self._portal_call(self._queue.get_value(task_id, timeout))

    def get_status(self, task_id: str) -> TaskStatus | None:
        """The task's status, or ``None`` for an unknown id."""
        return self._portal_call(self._queue.get_status(task_id))

    def cancel(self, task_id: str) -> bool:
        """Cancel a task; see :meth:`TaskQueue.cancel`."""
        return self._portal_call(self._queue.cancel(task_id))

    def get_task(self, task_id: str) -> TaskInfo | None:
        """``TaskQueue.get_task``: what an operator sees of a task, or ``None``."""
        return self._portal_call(self._queue.get_task(task_id))

    def list_tasks(
        self,
        status: str | TaskStatus | Iterable[str | TaskStatus] | None = None,
        queue: str | None = None,
        *,
        limit: int = 50,
        cursor: str | None = None,
    ) -> TaskPage:
        """``TaskQueue.list_tasks``: one page of tasks."""
        return self._portal_call(self._queue.list_tasks(status, queue, limit=limit, cursor=cursor))

    def requeue(self, task_id: str) -> bool:
        """``TaskQueue.requeue``: run a failed or cancelled task again."""
        return self._portal_call(self._queue.requeue(task_id))

    def requeue_many(self, status: str = "failed", queue: str | None = None) -> int:
        """``TaskQueue.requeue_many``: requeue every failed (or cancelled) task."""
        return self._portal_call(self._queue.requeue_many(status, queue))

    def purge(self, queue: str, status: str = "pending") -> int:
        """``TaskQueue.purge``: remove a queue's tasks in one state."""
        return self._portal_call(self._queue.purge(queue, status))

    def list_workers(self) -> list[WorkerInfo]:
        """``TaskQueue.list_workers``: the workers alive now."""
        return self._portal_call(self._queue.list_workers())

    def stats(self) -> list[QueueStats]:
        """Per-queue counts by state."""
        return self._portal_call(self._queue.stats())

    def remove_cron(self, name: str) -> bool:
        """Delete a cron schedule; ``True`` if it existed."""
        return self._portal_call(self._queue.remove_cron(name))

    def list_crons(self) -> list[CronInfo]:
        """Every stored cron schedule."""
        return self._portal_call(self._queue.list_crons())

    def lock(self, name: str, ttl: float = 30.0, timeout: float = 10.0) -> SyncLock:
        """A distributed lock: ``with queue.lock("name"):``; see :meth:`TaskQueue.lock`."""
        return SyncLock(self._portal_call, self._queue.lock(name, ttl, timeout))

    def __del__(self) -> None:
        portal = getattr(self, "_portal", None)
        if portal is not None:
            portal.stop()
