"""Where a task's code runs: on the worker's event loop, in threads, or in child processes.

An executor turns a payload into an :class:`~sitq._task.Outcome` within an optional timeout.
The engine stops an attempt (cancellation, a lost lease, shutdown) by cancelling the coroutine
awaiting ``run``; each executor does what it can to stop the code behind it.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import functools
from concurrent.futures import ThreadPoolExecutor

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
from sitq.serializers import Serializer


class Executor(abc.ABC):
    """Runs payloads; one instance per worker."""

    def __init__(self, serializer: Serializer, concurrency: int) -> None:
        self.serializer = serializer
        self.concurrency = concurrency

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare threads or processes before the first task."""

    @abc.abstractmethod
    async def run(self, payload: bytes, timeout: float | None) -> Outcome:
        """Run one task to its outcome; a timeout becomes a timed-out outcome."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads or processes."""


class _ThreadPoolMixin:
    _threads: ThreadPoolExecutor | None = None

    def _pool(self, size: int, name: str) -> ThreadPoolExecutor:
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=size, thread_name_prefix=name)
        return self._threads

    async def _in_thread(
        self,
        size: int,
        name: str,
        serializer: Serializer,
        payload: bytes | None,
        call: object,
        timeout: float | None,
    ) -> Outcome:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        if payload is not None:
            fn = functools.partial(ctx.run, run_payload, serializer, payload)
        else:
            fn = functools.partial(ctx.run, call_sync, serializer, call)  # type: ignore[arg-type]
        future = loop.run_in_executor(self._pool(size, name), fn)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # Python cannot stop a thread: the attempt is recorded as timed out and whatever the
            # thread returns later is discarded.
            assert timeout is not None
            return timed_out(timeout)

    def _shutdown_threads(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None


class AsyncExecutor(_ThreadPoolMixin, Executor):
    """Coroutine functions run on the worker's loop; sync functions in a thread pool."""

    async def run(self, payload: bytes, timeout: float | None) -> Outcome:
        """Await a coroutine function here, or hand a sync one to a thread."""
        call = load_call(self.serializer, payload)
        if isinstance(call, Outcome):
            return call
        func, args, kwargs = call
        if not is_async_callable(func):
            return await self._in_thread(
                self.concurrency, "sitq-task", self.serializer, None, call, timeout
            )
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
        return succeeded(self.serializer, value)

    async def close(self) -> None:
        """Let go of the thread pool (threads still running finish on their own)."""
        self._shutdown_threads()


class ThreadExecutor(_ThreadPoolMixin, Executor):
    """Every task runs in the worker's pool of ``concurrency`` threads; a coroutine function runs
    there under an event loop of its own, so task code never blocks the worker's loop."""

    async def run(self, payload: bytes, timeout: float | None) -> Outcome:
        """Load and run the payload in a pool thread."""
        return await self._in_thread(
            self.concurrency, "sitq-thread", self.serializer, payload, None, timeout
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

    async def run(self, payload: bytes, timeout: float | None) -> Outcome:
        """Send the payload to a free child and wait for its outcome."""
        outcome: Outcome = await self._pool.run(payload, timeout)
        return outcome

    async def close(self) -> None:
        """Stop every child process."""
        await self._pool.close()
