"""Where a task's code runs: on the worker's event loop, in threads, in child processes, or
(for tests) in the caller's own thread.

An executor turns a payload into an :class:`~sitq._task.Outcome` within an optional timeout.
The engine stops an attempt (cancellation, a lost lease, shutdown) by cancelling the coroutine
awaiting ``run``; each executor does what it can to stop the code behind it.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sitq._task import (
    Outcome,
    bad_call,
    call_sync,
    failure,
    is_async_callable,
    load_call,
    run_payload,
    succeeded,
    timed_out,
)
from sitq.context import TaskContext
from sitq.serializers import Serializer, TaskCall

log = logging.getLogger("sitq.worker")


class Executor(abc.ABC):
    """Runs payloads; one instance per worker."""

    def __init__(self, serializer: Serializer, concurrency: int) -> None:
        self.serializer = serializer
        self.concurrency = concurrency
        #: Called on the worker's loop when a slot held by an abandoned attempt comes free.
        self.on_slot_freed: Callable[[], None] | None = None

    @property
    def abandoned(self) -> int:
        """Slots held by attempts that have ended (timed out or stopped) while their code, which
        cannot be stopped, still runs: the worker starts nothing in them until it returns."""
        return 0

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare threads or processes before the first task."""

    @abc.abstractmethod
    async def run(
        self,
        payload: bytes,
        timeout: float | None,
        *,
        task_id: str = "",
        context: TaskContext | None = None,
    ) -> Outcome:
        """Run one task to its outcome; a timeout, counted from the moment the task starts
        running, becomes a timed-out outcome. ``task_id`` names the task in log messages.
        ``context`` is the task's :class:`TaskContext`: the caller has made it current for
        code on this loop and its threads; an executor that runs the task elsewhere (another
        process) makes it current there and carries its progress reports back."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads or processes."""


class _ThreadPoolMixin(Executor):
    """Sync code in a pool of ``concurrency`` threads.

    Python cannot stop a thread. When an attempt ends (timed out, cancelled, lease lost,
    shutdown) while its thread still runs the function, the attempt is settled at once but the
    thread keeps its slot until the function returns: ``abandoned`` counts such threads and the
    worker claims no task for their slots, so ``concurrency`` still bounds the threads at work
    and a task never waits for a thread after it was claimed.
    """

    _threads: ThreadPoolExecutor | None = None
    _thread_name = "sitq-task"

    def __init__(self, serializer: Serializer, concurrency: int) -> None:
        super().__init__(serializer, concurrency)
        self._abandoned = 0
        self._abandoned_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def abandoned(self) -> int:
        """Threads still running a function whose attempt has ended; each holds a slot."""
        return self._abandoned

    async def start(self) -> None:
        """Remember the loop to wake when an abandoned thread returns."""
        self._loop = asyncio.get_running_loop()

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=self._thread_name
            )
        return self._threads

    async def _in_thread(
        self, task_id: str, fn: Callable[[], Outcome], timeout: float | None
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        started: asyncio.Future[float] = loop.create_future()
        ctx = contextvars.copy_context()

        def begin() -> Outcome:
            # Only a timeout needs the loop told when the thread starts: without one the task
            # pays no cross-thread wake-up for it.
            if timeout is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, started, time.monotonic())
            return ctx.run(fn)

        work = self._pool().submit(begin)
        done = asyncio.wrap_future(work, loop=loop)
        how = "was stopped"
        try:
            if timeout is None:
                await asyncio.wait({done})
                return done.result()
            # The timeout counts from the moment the thread starts the task, never while the
            # task waits for a thread.
            either: set[asyncio.Future[Any]] = {done, started}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not done.done():
                left = started.result() + timeout - time.monotonic()
                if left > 0:
                    await asyncio.wait({done}, timeout=left)
                if not done.done():
                    how = f"timed out after {timeout:g} s"
                    return timed_out(timeout)
            return done.result()
        finally:
            if not done.done():
                self._abandon(work, task_id, how, started)
                # Whatever the thread returns or raises from now on is discarded.
                done.cancel()

    def _abandon(
        self,
        work: concurrent.futures.Future[Outcome],
        task_id: str,
        how: str,
        started: asyncio.Future[float],
    ) -> None:
        if work.cancel():
            return  # it never started
        with self._abandoned_lock:
            if work.done():
                return
            self._abandoned += 1
            held = self._abandoned
        since = started.result() if started.done() else time.monotonic()
        log.warning(
            "task %s %s, but Python cannot stop the thread running it: that thread keeps its "
            "slot until the function returns (%d of %d slots held this way)",
            task_id or "(unnamed)",
            how,
            held,
            self.concurrency,
        )
        work.add_done_callback(functools.partial(self._thread_returned, task_id, since))

    def _thread_returned(self, task_id: str, since: float, _: object) -> None:
        # Runs in the returning thread (or here, if it returned meanwhile).
        with self._abandoned_lock:
            self._abandoned -= 1
        log.info(
            "the thread still running task %s returned after %.1f s; its slot is free again",
            task_id or "(unnamed)",
            time.monotonic() - since,
        )
        loop, wake = self._loop, self.on_slot_freed
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the worker's loop has closed
                loop.call_soon_threadsafe(wake)

    def _shutdown_threads(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None


def _resolve(future: asyncio.Future[float], value: float) -> None:
    if not future.done():
        future.set_result(value)


class AsyncExecutor(_ThreadPoolMixin):
    """Coroutine functions run on the worker's loop; sync functions in a thread pool."""

    _thread_name = "sitq-task"

    async def run(
        self,
        payload: bytes,
        timeout: float | None,
        *,
        task_id: str = "",
        context: TaskContext | None = None,
    ) -> Outcome:
        """Await a coroutine function here, or hand a sync one to a thread."""
        call = load_call(self.serializer, payload)
        if isinstance(call, Outcome):
            return call
        if not is_async_callable(call[0]):
            return await self._in_thread(
                task_id, functools.partial(call_sync, self.serializer, call), timeout
            )
        return await _await_call(self.serializer, call, timeout)

    async def close(self) -> None:
        """Let go of the thread pool (threads still running finish on their own)."""
        self._shutdown_threads()


async def _await_call(serializer: Serializer, call: TaskCall, timeout: float | None) -> Outcome:
    """Await a coroutine function's call here, within ``timeout`` seconds."""
    func, args, kwargs = call
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            value = await func(*args, **kwargs)
    except TimeoutError as exc:
        if deadline.expired():
            assert timeout is not None
            return timed_out(timeout)
        return failure(exc)
    except TypeError as exc:
        return bad_call(call, exc)
    except Exception as exc:
        return failure(exc)
    return succeeded(serializer, value)


class InlineExecutor(Executor):
    """Every task runs in the caller's own thread, one at a time: coroutine functions are
    awaited on its event loop, sync functions called directly. For tests (``sitq.testing``).

    A sync function cannot be stopped from the thread it runs in: one that runs past its
    timeout is let finish, and its attempt then counts as timed out (its value is dropped), as
    a worker would have recorded it.
    """

    async def run(
        self,
        payload: bytes,
        timeout: float | None,
        *,
        task_id: str = "",
        context: TaskContext | None = None,
    ) -> Outcome:
        """Await or call the task here."""
        call = load_call(self.serializer, payload)
        if isinstance(call, Outcome):
            return call
        if is_async_callable(call[0]):
            return await _await_call(self.serializer, call, timeout)
        started = time.monotonic()
        func, args, kwargs = call
        try:
            value = func(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except TypeError as exc:
            return bad_call(call, exc)
        except Exception as exc:
            return failure(exc)
        if timeout is not None and time.monotonic() - started > timeout:
            return timed_out(timeout)
        return succeeded(self.serializer, value)


class ThreadExecutor(_ThreadPoolMixin):
    """Every task runs in the worker's pool of ``concurrency`` threads; a coroutine function runs
    there under an event loop of its own, so task code never blocks the worker's loop."""

    _thread_name = "sitq-thread"

    async def run(
        self,
        payload: bytes,
        timeout: float | None,
        *,
        task_id: str = "",
        context: TaskContext | None = None,
    ) -> Outcome:
        """Load and run the payload in a pool thread."""
        return await self._in_thread(
            task_id, functools.partial(run_payload, self.serializer, payload), timeout
        )

    async def close(self) -> None:
        """Let go of the thread pool (threads still running finish on their own)."""
        self._shutdown_threads()


class ProcessExecutor(Executor):
    """Every task runs in one of ``concurrency`` child processes; a timed-out or cancelled
    task's process is killed and replaced, and a process that dies fails only its own task."""

    def __init__(self, serializer: Serializer, concurrency: int) -> None:
        super().__init__(serializer, concurrency)
        from sitq._procpool import ProcessPool

        self._pool = ProcessPool(concurrency, serializer)

    async def start(self) -> None:
        """Start the child processes."""
        await self._pool.start()

    async def run(
        self,
        payload: bytes,
        timeout: float | None,
        *,
        task_id: str = "",
        context: TaskContext | None = None,
    ) -> Outcome:
        """Send the payload to a free child and wait for its outcome (the timeout counts from
        the moment a child has it; a task past it has its process killed, which frees the
        slot)."""
        outcome: Outcome = await self._pool.run(payload, timeout, context)
        return outcome

    async def close(self) -> None:
        """Stop every child process."""
        await self._pool.close()
