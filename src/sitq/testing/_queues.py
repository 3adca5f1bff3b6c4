"""``TestQueue`` and ``SyncTestQueue``: in-memory queues whose tasks run in the test's thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from sitq.backends.memory import MemoryBackend
from sitq.errors import ConfigurationError, SitqError
from sitq.queue import DEFAULT_MAX_PAYLOAD, TaskQueue
from sitq.serializers import Serializer
from sitq.sync import SyncOptionsView, SyncTaskQueue
from sitq.testing._clock import FakeClock

T = TypeVar("T")


def _fake_clock(clock: object) -> FakeClock:
    if clock is None:
        return FakeClock()
    if not isinstance(clock, FakeClock):
        raise ConfigurationError(
            f"clock must be a sitq.testing.FakeClock (or None for a new one), not {clock!r}"
        )
    return clock


class TestQueue(TaskQueue):
    """A :class:`~sitq.TaskQueue` over a new in-memory store, read on a :class:`FakeClock`.

    It has every method of ``TaskQueue``, so code under test takes it where it takes a queue.
    No worker runs its tasks: ``await sitq.testing.drain(queue)`` runs the due ones in the
    test's own thread and event loop. ``clock`` is the clock it shares with its store (a new
    ``FakeClock`` by default); the other arguments are those of ``TaskQueue``.
    """

    __test__ = False  # a queue, not a class of tests for pytest to collect

    def __init__(
        self,
        serializer: Serializer | None = None,
        *,
        clock: FakeClock | None = None,
        queue: str = "default",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        **defaults: Any,
    ) -> None:
        self._fake_clock = _fake_clock(clock)
        super().__init__(
            MemoryBackend(clock=self._fake_clock),
            serializer,
            queue=queue,
            max_payload=max_payload,
            clock=self._fake_clock,
            **defaults,
        )

    @property
    def clock(self) -> FakeClock:
        """The queue's clock: move it with ``advance`` or ``advance_to``."""
        return self._fake_clock

    def __repr__(self) -> str:
        return f"TestQueue(queue={self.task_options.queue!r}, clock={self._fake_clock!r})"


class SyncTestQueue(SyncTaskQueue):
    """The blocking face of :class:`TestQueue`: every method of :class:`~sitq.SyncTaskQueue`.

    It has no background thread: each call runs in the calling thread, on an event loop of
    the queue's own. ``sitq.testing.drain(queue)`` (not awaited) runs the due tasks in that
    thread too. A task that drain runs may call the queue (enqueue more tasks, read results of
    finished ones); such a call cannot wait, since the thread is busy running the task.
    """

    __test__ = False  # a queue, not a class of tests for pytest to collect

    def __init__(
        self,
        serializer: Serializer | None = None,
        *,
        clock: FakeClock | None = None,
        queue: str = "default",
        **defaults: Any,
    ) -> None:
        # SyncTaskQueue.__init__ is left out on purpose: it starts a background loop thread.
        self._test_queue = TestQueue(serializer, clock=clock, queue=queue, **defaults)
        self._queue = self._test_queue
        self._portal = None
        self._loop: asyncio.AbstractEventLoop | None = asyncio.new_event_loop()
        self._loop_lock = threading.Lock()
        SyncOptionsView.__init__(self, self._portal_call, self._queue)

    @property
    def clock(self) -> FakeClock:
        """The queue's clock: move it with ``advance`` or ``advance_to``."""
        return self._test_queue.clock

    @property
    def async_queue(self) -> TestQueue:
        """The :class:`TestQueue` this queue calls (its store and clock)."""
        return self._test_queue

    def _portal_call(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise SitqError("SyncTestQueue is closed")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            with self._loop_lock:
                return loop.run_until_complete(coro)
        return _run_without_waiting(coro)

    def close(self) -> None:
        """Close the store and the queue's event loop. Idempotent."""
        loop = self._loop
        if loop is None:
            return
        try:
            self._portal_call(self._queue.close())
        finally:
            self._loop = None
            if not loop.is_running():
                loop.close()

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None and not loop.is_running():
            loop.close()

    def __repr__(self) -> str:
        return (
            f"SyncTestQueue(queue={self._queue.task_options.queue!r}, "
            f"clock={self._test_queue.clock!r})"
        )


def _run_without_waiting(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end here, where an event loop is already running (in a task that
    drain runs, or an async test): the memory store answers at once, so the call finishes
    without waiting; one that would have to wait is refused."""
    try:
        while coro.send(None) is None:  # a bare yield (sleep(0)) only lets others run
            pass
    except StopIteration as stop:
        return cast(T, stop.value)
    coro.close()
    raise SitqError(
        "SyncTestQueue was called where an event loop is already running (in a task that "
        "drain() runs, or in an async test), and the call would have to wait (for a task to "
        "finish, or for a lock): nothing else can run meanwhile. Read results after drain() "
        "returns, and in async code use TestQueue and await its methods"
    )
