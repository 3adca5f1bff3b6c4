"""A pool of worker processes that run task payloads: what ``ProcessWorker`` executes tasks in.

Each child is ``python -m sitq._child`` started with fork+exec by asyncio, which is safe beside a
running event loop and threads, and unlike :mod:`multiprocessing` never re-imports the user's
``__main__``. Requests and responses travel on two extra pipes (see :mod:`sitq._child` for the
protocol), so a task's own stdout and stderr go straight to the parent's.

A child that dies, times out or whose caller is cancelled is killed, reaped and replaced in the
background; the pool keeps working.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import sys
from collections import deque
from contextlib import suppress

import cloudpickle

from sitq._child import HEADER, INIT_ERROR, MAX_FRAME, PROGRESS, READY, encode_context
from sitq._task import Outcome, exception_names, one_line, timed_out
from sitq.context import TaskContext
from sitq.errors import ConfigurationError
from sitq.observe import tracing
from sitq.serializers import Serializer

# The directory holding the ``sitq`` package: the child needs it on its path to start at all.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STARTUP_TIMEOUT = 60.0
# A child's exit and the end of its pipes are seen separately; how long one may lag the other.
_SETTLE_TIMEOUT = 1.0
# SIGKILL is not ignorable, so this only bounds the wait for a process stuck in the kernel.
_REAP_TIMEOUT = 10.0


class _SpawnFailed(Exception):
    """A child could not be started; the message says why."""


class _PoolClosed(Exception):
    """The pool was closed while a caller waited for a child."""


class _TimedOut(Exception):
    """The task ran past its timeout."""


class _ChildDied(Exception):
    """The child ended (or stopped answering) while it ran a task."""

    def __init__(self, returncode: int | None) -> None:
        super().__init__(returncode)
        self.returncode = returncode


def describe_exit(returncode: int | None) -> str:
    """How a worker process ended: ``exited with code 3``, ``was killed by signal SIGKILL``."""
    if returncode is None:
        return "stopped answering (it closed its result pipe)"
    if returncode >= 0:
        return f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return f"was killed by signal {name}"


def _frame(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return await reader.readexactly(size)


async def _exchange(
    writer: asyncio.StreamWriter, reader: asyncio.StreamReader, data: bytes
) -> bytes:
    writer.write(_frame(data))
    await writer.drain()
    return await _read_frame(reader)


async def _task_exchange(
    writer: asyncio.StreamWriter,
    reader: asyncio.StreamReader,
    payload: bytes,
    context: TaskContext | None,
) -> bytes:
    """Send a task (its context, then its payload); pass its progress reports to
    ``context`` and return its outcome frame."""
    # Runs in a copy of the caller's context: the span current there goes with the task.
    writer.write(_frame(encode_context(context, tracing.current_carrier())) + _frame(payload))
    await writer.drain()
    while True:
        reply = await _read_frame(reader)
        if not reply.startswith(PROGRESS):
            return reply
        with suppress(Exception):  # a garbled or stray report is dropped, never the task
            task_id, value, message = json.loads(reply[len(PROGRESS) :])
            # A thread the previous task left running may still report: only this task counts.
            if context is not None and task_id == context.task_id:
                context.set_progress(value, message)


def _settle(task: asyncio.Task[bytes]) -> None:
    """Cancel a pending exchange, or mark its exception as seen (it is reported otherwise)."""
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def _exchange_result(task: asyncio.Task[bytes]) -> bytes | None:
    if task.done() and not task.cancelled() and task.exception() is None:
        return task.result()
    return None


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with suppress(OSError):
            os.close(fd)
    fds.clear()


def _dup_stderr() -> int:
    try:
        return os.dup(2)
    except OSError:  # no stderr at all (a daemon): tasks' stderr output goes nowhere
        return os.open(os.devnull, os.O_WRONLY)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    old = env.get("PYTHONPATH")
    if not old:
        env["PYTHONPATH"] = _PACKAGE_ROOT
    elif _PACKAGE_ROOT not in old.split(os.pathsep):
        env["PYTHONPATH"] = _PACKAGE_ROOT + os.pathsep + old
    return env


def _child_failure(message: str) -> Outcome:
    return Outcome(
        ok=False,
        error=f"ChildProcessError: {message}",
        traceback="",
        exc_types=exception_names(ChildProcessError),
    )


def _runtime_failure(message: str) -> Outcome:
    # The error stays one line; a child's stderr and the like go where a traceback would.
    first, _, details = message.partition("\n")
    return Outcome(
        ok=False,
        error=f"RuntimeError: {first}",
        traceback=details,
        exc_types=exception_names(RuntimeError),
    )


def _decode_outcome(data: bytes) -> Outcome:
    try:
        outcome = pickle.loads(data)
    except Exception as exc:
        return _child_failure(
            f"the task's worker process sent an unreadable result: {one_line(exc)}"
        )
    if not isinstance(outcome, Outcome):
        kind = type(outcome).__name__
        return _child_failure(f"the task's worker process sent a {kind}, not an Outcome")
    return outcome


class _Child:
    """One ready worker process and the parent's ends of its pipes."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        exited: asyncio.Task[int],
        reader: asyncio.StreamReader,
        read_transport: asyncio.ReadTransport,
        writer: asyncio.StreamWriter,
        stderr_reader: asyncio.Task[bytes],
    ) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.exited = exited
        self.reader = reader
        self.read_transport = read_transport
        self.writer = writer
        # Kept referenced: it drains the startup stderr pipe, which wait() needs closed.
        self.stderr_reader = stderr_reader

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.exited.done()

    def close_input(self) -> None:
        """Close the request pipe: the child exits once it finishes its current task."""
        if not self.writer.transport.is_closing():
            self.writer.close()

    def kill(self) -> None:
        if self.proc.returncode is None:
            with suppress(ProcessLookupError):
                self.proc.kill()

    def close_pipes(self) -> None:
        if not self.writer.transport.is_closing():
            self.writer.transport.abort()
        self.read_transport.close()


class ProcessPool:
    """A pool of `size` child processes that run task payloads, one task per child at a time.

    ``run()`` queues callers fairly when every child is busy. A child that crashes, runs past its
    timeout, or whose caller is cancelled is killed and a replacement is started in the
    background. Call ``close()`` when done: it stops and reaps every child.
    """

    #: Seconds ``close()`` lets children finish their current task before killing them.
    close_grace: float = 1.0

    def __init__(self, size: int, serializer: Serializer) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"ProcessPool(size={size!r}): the size must be an int >= 1")
        try:
            self._serializer_blob = bytes(cloudpickle.dumps(serializer))
        except Exception as exc:
            raise ConfigurationError(
                f"the serializer {serializer!r} cannot be pickled to send it to worker "
                f"processes: {exc}"
            ) from exc
        self._size = size
        self._idle: deque[_Child] = deque()
        self._waiters: deque[asyncio.Future[_Child]] = deque()
        self._live: set[_Child] = set()  # ready children, idle or busy: they fill the slots
        self._unreaped: set[_Child] = set()  # every adopted child whose exit is not yet seen
        self._spawns: set[asyncio.Task[_Child]] = set()
        self._spawning = 0
        self._started = False
        self._closed = False
        self._close_task: asyncio.Task[None] | None = None

    @property
    def size(self) -> int:
        """How many children the pool keeps."""
        return self._size

    async def start(self) -> None:
        """Start every child and wait until each has reported ready.

        Raises ``RuntimeError`` (naming the child's exit code and stderr) if one cannot start;
        the pool is closed then.
        """
        if self._closed:
            raise RuntimeError("the process pool is closed")
        if self._started:
            return
        self._started = True
        tasks = [self._spawn_in_background() for _ in range(self._free_slots())]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close()
            first = errors[0]
            reason = str(first) if isinstance(first, _SpawnFailed) else "the pool was closed"
            raise RuntimeError(
                f"{len(errors)} of {len(tasks)} worker processes failed to start: {reason}"
            )

    async def run(
        self, payload: bytes, timeout: float | None, context: TaskContext | None = None
    ) -> Outcome:
        """Run one payload in a free child and return its outcome.

        Waits for a free child first. ``timeout`` is in seconds (``None``: no limit); past it
        the child is killed and a timed-out outcome returned. A child that dies gives a
        ``ChildProcessError`` outcome. If the caller is cancelled, the child is killed and
        ``CancelledError`` propagates. ``context`` becomes the task's ``current_task()`` in
        the child, and its progress reports come back to it.
        """
        if len(payload) > MAX_FRAME:
            return Outcome(
                ok=False,
                error=f"ValueError: the payload is {len(payload)} bytes, over {MAX_FRAME}",
                traceback="",
                exc_types=exception_names(ValueError),
                permanent=True,
            )
        while True:
            try:
                child = await self._acquire()
            except _SpawnFailed as exc:
                return _runtime_failure(str(exc))
            except _PoolClosed:
                return _runtime_failure("the process pool is closed")
            if child.alive:
                break
            self._discard(child)  # died between being handed over and now: take another
        try:
            outcome = await self._call(child, payload, timeout, context)
        except _TimedOut:
            await self._kill_and_reap(child)
            assert timeout is not None
            return timed_out(timeout)
        except _ChildDied as died:
            await self._kill_and_reap(child)
            how = describe_exit(died.returncode)
            if self._closed:
                return _child_failure(
                    f"the process pool was closed while the task ran (its worker process {how})"
                )
            return _child_failure(f"the task's worker process {how}")
        except BaseException:
            # Cancelled (or something unexpected): the child is mid-task, so it cannot be reused.
            await self._kill_and_reap(child)
            raise
        self._release(child)
        return outcome

    async def close(self) -> None:
        """Stop every child and reap it. Pending ``run()`` calls get a failure outcome."""
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    # -- slots -------------------------------------------------------------------------------

    def _free_slots(self) -> int:
        return self._size - len(self._live) - self._spawning

    def _fill(self) -> None:
        if self._closed:
            return
        for _ in range(self._free_slots()):
            self._spawn_in_background()

    def _spawn_in_background(self) -> asyncio.Task[_Child]:
        self._spawning += 1
        task = asyncio.ensure_future(self._spawn())
        self._spawns.add(task)
        # A done callback, not code after the await: it also runs for a task cancelled before
        # it ever started.
        task.add_done_callback(self._spawn_done)
        return task

    def _spawn_done(self, task: asyncio.Task[_Child]) -> None:
        self._spawning -= 1
        self._spawns.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._adopt(task.result())
            return
        # The first waiter learns why; each waiter gets a child or an error, so none waits on
        # a slot that nothing is filling.
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc)
                break
        if self._waiters:
            self._fill()

    def _adopt(self, child: _Child) -> None:
        self._unreaped.add(child)
        self._live.add(child)
        child.exited.add_done_callback(lambda _: self._on_exit(child))
        self._release(child)

    def _on_exit(self, child: _Child) -> None:
        if child.exited.cancelled():
            # Not an exit: the event loop is shutting down without close(). Nothing may be
            # started now; the child must not outlive its watcher.
            child.kill()
            child.close_pipes()
            self._live.discard(child)
            return
        self._unreaped.discard(child)
        if child in self._idle:
            self._discard(child)  # died while idle: replace it now rather than at the next run

    def _release(self, child: _Child) -> None:
        if self._closed or not child.alive:
            self._discard(child)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(child)
                return
        self._idle.append(child)

    def _discard(self, child: _Child) -> None:
        child.kill()
        child.close_pipes()
        self._live.discard(child)
        with suppress(ValueError):
            self._idle.remove(child)
        self._fill()

    async def _kill_and_reap(self, child: _Child) -> None:
        self._discard(child)
        await asyncio.wait({child.exited}, timeout=_REAP_TIMEOUT)

    async def _acquire(self) -> _Child:
        if self._closed:
            raise _PoolClosed
        if not self._waiters:
            while self._idle:
                child = self._idle.popleft()
                if child.alive:
                    return child
                self._discard(child)
        waiter: asyncio.Future[_Child] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._fill()
        try:
            return await waiter
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():
                with suppress(ValueError):
                    self._waiters.remove(waiter)
            elif waiter.exception() is None:
                self._release(waiter.result())  # handed a child just as we were cancelled
            raise

    # -- one task ----------------------------------------------------------------------------

    async def _call(
        self, child: _Child, payload: bytes, timeout: float | None, context: TaskContext | None
    ) -> Outcome:
        exchange = asyncio.ensure_future(
            _task_exchange(child.writer, child.reader, payload, context)
        )
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({exchange, child.exited}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            _settle(exchange)
            raise _TimedOut from None
        except BaseException:
            _settle(exchange)
            raise
        try:
            if not exchange.done():
                # It exited; its result may still be in the pipe if it died right after a task.
                await asyncio.wait({exchange}, timeout=_SETTLE_TIMEOUT)
            elif not child.exited.done() and _exchange_result(exchange) is None:
                # The pipe broke: let the exit status catch up so the outcome can name it.
                await asyncio.wait({child.exited}, timeout=_SETTLE_TIMEOUT)
        finally:
            _settle(exchange)
        data = _exchange_result(exchange)
        if data is None:
            raise _ChildDied(child.proc.returncode)
        return _decode_outcome(data)

    # -- starting a child --------------------------------------------------------------------

    async def _spawn(self) -> _Child:
        """Start one child and wait for its ready frame; raises only ``_SpawnFailed``/cancel."""
        loop = asyncio.get_running_loop()
        ours: list[int] = []  # our ends of the pipes, until a transport owns them
        theirs: list[int] = []  # in the order the child's argv names them
        try:
            req_r, req_w = os.pipe()
            theirs.append(req_r)
            ours.append(req_w)
            resp_r, resp_w = os.pipe()
            ours.append(resp_r)
            theirs.append(resp_w)
            theirs.append(_dup_stderr())
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                # -P: a ``sitq`` directory in the current directory must not shadow this one.
                "-P",
                "-m",
                "sitq._child",
                *(str(fd) for fd in theirs),
                stdin=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                pass_fds=theirs,
                env=_child_env(),
            )
        except OSError as exc:
            _close_fds(ours)
            raise _SpawnFailed(f"could not start a worker process: {exc}") from exc
        except BaseException:
            _close_fds(ours)
            raise
        finally:
            _close_fds(theirs)

        assert proc.stderr is not None
        stderr_reader = asyncio.ensure_future(proc.stderr.read())
        exited = asyncio.ensure_future(proc.wait())
        transports: list[asyncio.BaseTransport] = []
        try:
            reader = asyncio.StreamReader()
            ours.remove(resp_r)
            read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(resp_r, "rb", buffering=0)
            )
            transports.append(read_transport)
            ours.remove(req_w)
            write_transport, write_protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, os.fdopen(req_w, "wb", buffering=0)
            )
            transports.append(write_transport)
            writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
            init = pickle.dumps(
                (list(sys.path), os.environ.get("PYTHONPATH"), self._serializer_blob),
                protocol=pickle.HIGHEST_PROTOCOL,
            )
            await self._handshake(proc, exited, stderr_reader, reader, writer, init)
        except BaseException as exc:
            with suppress(ProcessLookupError):
                proc.kill()
            for transport in transports:
                transport.close()
            _close_fds(ours)
            if isinstance(exc, GeneratorExit):
                raise  # the coroutine is being discarded with its loop: it cannot await
            await asyncio.wait({exited}, timeout=_REAP_TIMEOUT)
            if isinstance(exc, Exception) and not isinstance(exc, _SpawnFailed):
                raise _SpawnFailed(f"could not start a worker process: {one_line(exc)}") from exc
            raise
        # The child swapped its stderr for ours before it said ready, so this ends right away.
        await asyncio.wait({stderr_reader}, timeout=_SETTLE_TIMEOUT)
        if stderr_reader.done() and not stderr_reader.cancelled() and stderr_reader.result():
            # Warnings printed while it started: pass them on as if the child had printed them.
            sys.stderr.write(stderr_reader.result().decode("utf-8", "replace"))
        return _Child(proc, exited, reader, read_transport, writer, stderr_reader)

    @staticmethod
    async def _handshake(
        proc: asyncio.subprocess.Process,
        exited: asyncio.Task[int],
        stderr_reader: asyncio.Task[bytes],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        init: bytes,
    ) -> None:
        exchange = asyncio.ensure_future(_exchange(writer, reader, init))
        try:
            async with asyncio.timeout(_STARTUP_TIMEOUT):
                await asyncio.wait({exchange, exited}, return_when=asyncio.FIRST_COMPLETED)
                if not exchange.done():
                    await asyncio.wait({exchange}, timeout=_SETTLE_TIMEOUT)
        except TimeoutError:
            raise _SpawnFailed(
                f"a worker process (pid {proc.pid}) did not report ready within "
                f"{_STARTUP_TIMEOUT:g} s"
            ) from None
        finally:
            _settle(exchange)
        answer = _exchange_result(exchange)
        if answer == READY:
            return
        # It failed: collect its exit status and whatever it printed before it went. It exits
        # by itself after an init error; kill it only if it does not.
        await asyncio.wait({exited}, timeout=_SETTLE_TIMEOUT)
        with suppress(ProcessLookupError):
            proc.kill()
        await asyncio.wait({exited, stderr_reader}, timeout=_SETTLE_TIMEOUT)
        stderr = b""
        if stderr_reader.done() and not stderr_reader.cancelled():
            stderr = stderr_reader.result()
        details = []
        if answer is not None and answer.startswith(INIT_ERROR):
            details.append(answer[len(INIT_ERROR) :].decode("utf-8", "replace").strip())
        if stderr.strip():
            details.append("its stderr:\n" + stderr.decode("utf-8", "replace").strip())
        how = describe_exit(proc.returncode) if proc.returncode is not None else "failed"
        message = f"a worker process (python -m sitq._child) {how} before it was ready"
        raise _SpawnFailed(message + ("\n" + "\n".join(details) if details else ""))

    # -- closing -----------------------------------------------------------------------------

    async def _close(self) -> None:
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_PoolClosed())
        spawns = list(self._spawns)
        for task in spawns:
            task.cancel()
        # Their cleanup kills and reaps what they started; finished ones are adopted by now.
        await asyncio.gather(*spawns, return_exceptions=True)
        children = list(self._unreaped)
        self._idle.clear()
        for child in children:
            child.close_input()
        exits = {child.exited for child in children}
        if exits:
            await asyncio.wait(exits, timeout=self.close_grace)
            for child in children:
                child.kill()
            await asyncio.wait(exits, timeout=_REAP_TIMEOUT)
        for child in children:
            child.close_pipes()
            self._live.discard(child)
        # Let the transports' scheduled closes run, so every fd is closed when close() returns.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
