"""The worker engine, and the three worker kinds that differ only in their executor.

One :class:`Worker` claims tasks sized to its free slots, holds each claim under a lease that a
heartbeat renews, runs the task through its executor, and settles the claim (finish, retry or
release) with the claim's fencing token, in batches. Everything a task's life means — retries,
backoff, timeouts, cancellation, lost workers, shutdown — is decided here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import math
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from sitq._task import Outcome
from sitq.backends import redact_url, resolve_backend
from sitq.backends.base import Backend
from sitq.context import TaskContext, running
from sitq.cron import CronDriver
from sitq.errors import BackendError, ConfigurationError, check_clock, check_seconds
from sitq.executors import AsyncExecutor, Executor, ProcessExecutor, ThreadExecutor
from sitq.models import (
    MAX_ETA_TIMESTAMP,
    Claim,
    ClaimRef,
    Finish,
    LeaseState,
    Progress,
    Release,
    Reschedule,
    Settlement,
    TaskStatus,
    WorkerRecord,
)
from sitq.observe import logs, tracing
from sitq.observe.metrics import TaskSeries, WorkerMetrics
from sitq.options import (
    DEFAULT_FAILURE_TTL,
    DEFAULT_RESULT_TTL,
    RateLimit,
    check_queue_name,
    parse_engine_options,
)
from sitq.serializers import PickleSerializer, Serializer

log = logging.getLogger("sitq.worker")

PURGE_INTERVAL = 30.0
"""Default seconds between sweeps for expired results (they are removed within a minute)."""
CONNECT_RETRY_MAX = 5.0
"""Longest wait (seconds) between attempts to connect an unreachable backend in ``run()``."""


RATE_START_MARGIN = 0.1
"""Seconds a rate limit's slot is held beyond its period: they cover the step from taking the
slot to the task's first line (a thread or child process taking the task up), so that start
times as tasks see them keep to the limit too."""
_RATE_WAIT_MIN = 0.001
"""The shortest wait (seconds) of a task whose rate limit had no free slot."""
_RATE_FULL_MAX = 1024
"""Rate limits remembered as full at most (the ones whose time has passed go first)."""


class StopReason(enum.Enum):
    """Why the worker cancelled a task it was running, which decides what it records."""

    LOST = "lost"
    """Another claim of the task is current (the lease ran out): record nothing."""
    CANCELLED = "cancelled"
    """``cancel`` was asked while the task ran: record it as cancelled."""
    SHUTDOWN = "shutdown"
    """A graceful stop ran out of time: release the task back to its queue."""
    ABANDON = "abandon"
    """A hard stop: record nothing; the lease brings the task back."""


@dataclass(slots=True, eq=False)
class _Held:
    """A claim this worker holds: executing, then settling."""

    claim: Claim
    ref: ClaimRef
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    settling: bool = False
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False
    progress: tuple[float, str | None] | None = None
    """The task's latest ``set_progress`` (written from its thread or process reader)."""
    saved_progress: tuple[float, str | None] | None = None
    series: TaskSeries | None = None
    """Where the attempt is counted, with metrics on."""
    duration: float = 0.0
    """Seconds the attempt ran, once it ended."""
    trace: tracing.Processing | None = None
    """The attempt's span, when traces are recorded or passed on."""

    def report(self, value: float, message: str | None) -> None:
        """Keep the latest progress for the next heartbeat (one assignment: thread-safe)."""
        self.progress = (value, message)


class Worker:
    """The engine. Use :class:`AsyncWorker`, :class:`ThreadWorker` or :class:`ProcessWorker`.

    ``purge_interval`` is the number of seconds between this worker's sweeps for expired
    results (default 30, so a result is gone within a minute of its expiry).

    A task's ``timeout`` counts from the moment it starts running. A sync task that runs past
    it, or is stopped, is settled at once, but Python cannot stop its thread: that thread keeps
    its slot until the function returns (``abandoned_threads``; a warning is logged), so the
    worker never runs more than ``concurrency`` tasks' code at once.

    ``metrics``: ``True`` counts the tasks this worker runs in a new
    :class:`~sitq.observe.metrics.WorkerMetrics` (the ``sitq[metrics]`` extra), available as
    ``worker.metrics``; or pass a ``WorkerMetrics`` (several workers may share one). Off by
    default: then the worker counts nothing and ``worker.metrics`` is ``None``.

    ``clock`` is where the worker reads the time (POSIX seconds) for retry ETAs, finish and
    expiry times, its record and the cron schedules: ``time.time`` by default; ``sitq.testing``
    gives a :class:`~sitq.testing.FakeClock`. The backend keeps its own clock for leases and ETAs.
    """

    executor_class: type[Executor] = AsyncExecutor
    kind = "async"
    """The worker kind its record shows (``async``, ``thread`` or ``process``)."""

    def __init__(
        self,
        backend: Backend | str | None,
        serializer: Serializer | None = None,
        concurrency: int | None = 10,
        *,
        queues: Iterable[str] = ("default",),
        lease: float = 30.0,
        shutdown_timeout: float = 30.0,
        poll_interval: float = 1.0,
        cron: bool = True,
        purge_interval: float = PURGE_INTERVAL,
        metrics: WorkerMetrics | bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._clock = check_clock(clock)
        if concurrency is None:
            concurrency = os.cpu_count() or 1
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(f"concurrency must be an int >= 1, not {concurrency!r}")
        if isinstance(queues, str):
            queues = (queues,)
        self.queues: tuple[str, ...] = tuple(check_queue_name(q, "queues") for q in queues)
        if not self.queues:
            raise ConfigurationError("queues must name at least one queue")
        self.backend: Backend = resolve_backend(backend)
        self.serializer: Serializer = serializer if serializer is not None else PickleSerializer()
        self.concurrency = concurrency
        self.lease = check_seconds("lease", lease, allow_inf=True)
        self.shutdown_timeout = check_seconds(
            "shutdown_timeout", shutdown_timeout, allow_zero=True, allow_inf=True
        )
        self.poll_interval = check_seconds("poll_interval", poll_interval, allow_inf=True)
        self.purge_interval = check_seconds("purge_interval", purge_interval)
        self.heartbeat_interval = min(self.lease / 3, 2.0)
        self.cron = bool(cron)
        self._cron_driver = CronDriver(self.backend, clock=self._clock)
        self._hostname = socket.gethostname()
        self.worker_id = f"{self._hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._started_at = 0.0
        self.executor: Executor = self.executor_class(self.serializer, concurrency)
        self.executor.on_slot_freed = self._on_slot_freed
        self._all_slots_abandoned = False
        self._held: dict[str, _Held] = {}
        self._executing = 0
        self._slot_freed = asyncio.Event()
        self._pending: list[tuple[_Held, Settlement]] = []
        self._settle_wanted = asyncio.Event()
        self._settle_progress = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._claim_task: asyncio.Task[None] | None = None
        self._waiting_for_work = False
        self._started = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self._signals = 0
        self._force = False
        self._owns_connection = False
        self.counters = {
            "claimed": 0,
            "succeeded": 0,
            "failed": 0,
            "retried": 0,
            "released": 0,
            "lost": 0,
            "refused": 0,
            "purged": 0,
            "rate_limited": 0,
        }
        self._rate_full: dict[RateLimit, float] = {}
        """Rate limits whose slots were all held when last asked, and (``time.monotonic``)
        until when the first of them stays held: tasks of such a rate wait without asking."""
        self.metrics: WorkerMetrics | None = _metrics(metrics)
        """The worker's task metrics, or ``None`` when it counts none."""
        if self.metrics is not None:
            self.metrics.include(self.queues)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the backend if needed, start the executor and begin claiming; returns at once."""
        if self._started:
            return
        self._started = True
        self._force = False
        self._signals = 0
        self._stopped = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._settle_wanted = asyncio.Event()
        try:
            if await self.backend.connect_here():
                self._owns_connection = True
            await self.executor.start()
        except BaseException:
            self._started = False
            if self._owns_connection:
                self._owns_connection = False
                await self.backend.close()
            raise
        self._started_at = self._clock()
        await self._put_record()
        self._claim_task = asyncio.create_task(self._claim_loop(), name="sitq-claim")
        self._background = [
            asyncio.create_task(self._heartbeat_loop(), name="sitq-heartbeat"),
            asyncio.create_task(self._settle_loop(), name="sitq-settle"),
            asyncio.create_task(self._purge_loop(), name="sitq-purge"),
        ]
        if self.cron:
            self._background.append(asyncio.create_task(self._cron_driver.run(), name="sitq-cron"))
        log.info(
            "worker %s started on %s, queues %s",
            self.worker_id,
            self.backend.describe(),
            ",".join(self.queues),
        )

    async def stop(self) -> None:
        """Stop claiming, let running tasks finish for up to ``shutdown_timeout`` seconds, then
        release the rest back to the queue (not counted as an attempt)."""
        await self._shutdown(grace=self.shutdown_timeout, release=True)

    async def _shutdown(self, grace: float, release: bool) -> None:
        if not self._started:
            return
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            await self._stop_claiming()
            running = [h.task for h in self._held.values() if h.task is not None and not h.settling]
            if running and grace > 0:
                await asyncio.wait(running, timeout=grace)
            reason = StopReason.SHUTDOWN if release and not self._force else StopReason.ABANDON
            for held in list(self._held.values()):
                if held.task is not None and not held.task.done():
                    held.stop_reason = reason
                    held.task.cancel()
            tasks = [h.task for h in self._held.values() if h.task is not None]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if release:
                await self._drain_settlements()
        finally:
            current = asyncio.current_task()
            for task in self._background:
                if task is not current:
                    task.cancel()
            await asyncio.gather(
                *(t for t in self._background if t is not current), return_exceptions=True
            )
            self._background = []
            for held in self._held.values():
                if held.settling and held.series is not None:
                    self._count(held, "abandoned")  # its outcome could not be recorded
            await self.executor.close()
            try:
                await asyncio.wait_for(self.backend.remove_worker(self.worker_id), 5.0)
            except Exception as exc:
                log.warning("removing this worker's record failed (it expires): %s", exc)
            if self._owns_connection:
                await self.backend.close()
                self._owns_connection = False
            self._started = False
            self._stopping = False
            self._stopped.set()
            log.info("worker %s stopped", self.worker_id)

    async def _stop_claiming(self) -> None:
        task = self._claim_task
        self._claim_task = None
        if task is None:
            return
        self._slot_freed.set()
        if self._waiting_for_work:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _drain_settlements(self) -> None:
        # The settle loop records what is pending (and retries failures); wait until every
        # outcome is recorded, including a batch already in flight, before it is cancelled.
        deadline = time.monotonic() + max(self.shutdown_timeout, 5.0)
        self._settle_wanted.set()
        while any(h.settling for h in self._held.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._settle_progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settle_progress.wait(), remaining)

    async def run(self, *, connect_timeout: float | None = None) -> None:
        """Connect, work until :meth:`stop` is called or the process gets SIGINT/SIGTERM.

        While the backend is unreachable, connecting is retried with back-off (0.1 s doubling
        to 5 s), one log line per attempt, for ever or until ``connect_timeout`` seconds have
        passed (then the last :class:`BackendError` is raised; ``0`` tries once). A signal
        meanwhile stops at once. Once working, the first signal stops gracefully; a second
        SIGINT stops at once, leaving running tasks to come back when their leases run out.
        """
        check_seconds(
            "connect_timeout", connect_timeout, allow_zero=True, allow_inf=True, allow_none=True
        )
        loop = asyncio.get_running_loop()
        interrupted = asyncio.Event()

        def interrupt(sig: signal.Signals) -> None:
            log.warning("%s: stopping before the worker started", sig.name)
            interrupted.set()

        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, interrupt, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            if not await self._connect_retrying(connect_timeout, interrupted):
                return
            await self.start()
            if interrupted.is_set():
                await self.stop()
                return
            for sig in installed:
                loop.add_signal_handler(sig, self._on_signal, sig)
            await self._stopped.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _connect_retrying(self, timeout: float | None, interrupted: asyncio.Event) -> bool:
        """Connect the backend (if it is not), retrying with capped back-off; False if
        ``interrupted`` was set first (then nothing is left connected)."""
        if self.backend.connected:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.1
        while not interrupted.is_set():
            attempt = asyncio.ensure_future(self.backend.connect())
            stop = asyncio.ensure_future(interrupted.wait())
            try:
                await asyncio.wait({attempt, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not attempt.done():
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await attempt
                break
            try:
                attempt.result()
            except BackendError as exc:
                left = math.inf if deadline is None else deadline - time.monotonic()
                if left <= 0:
                    raise
                wait = min(delay, left)
                where = redact_url(self.backend.describe())
                error = str(exc) if where in str(exc) else f"at {where}: {exc}"
                log.warning("backend unreachable (%s); retrying in %.1f s", error, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(interrupted.wait(), wait)
                delay = min(delay * 2, CONNECT_RETRY_MAX)
                continue
            if not interrupted.is_set():
                self._owns_connection = True
                return True
            break
        # Interrupted: undo whatever a connection attempt cut short may have opened.
        with contextlib.suppress(Exception):
            await self.backend.close()
        return False

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning("%s: stopping gracefully (again to stop at once)", sig.name)
            task = asyncio.get_running_loop().create_task(self.stop())
            self._background.append(task)
        else:
            log.warning("%s: stopping at once; leases bring running tasks back", sig.name)
            self._abandon_running()

    def _abandon_running(self) -> None:
        self._force = True
        for held in self._held.values():
            if held.task is not None and not held.task.done() and not held.settling:
                held.stop_reason = StopReason.ABANDON
                held.task.cancel()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._started

    @property
    def abandoned_threads(self) -> int:
        """Threads still running a task whose attempt already ended (timed out or stopped);
        each keeps its slot until the function returns."""
        return self.executor.abandoned

    # -- claiming ---------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping:
            abandoned = self.executor.abandoned
            free = self.concurrency - self._executing - abandoned
            if abandoned >= self.concurrency and not self._all_slots_abandoned:
                log.warning(
                    "every slot (%d) is held by a thread still running a task that timed out or "
                    "was stopped; no task is claimed until one of them returns",
                    self.concurrency,
                )
            self._all_slots_abandoned = abandoned >= self.concurrency
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            try:
                claims = await self.backend.claim(self.queues, free, self.worker_id, self.lease)
                failures = 0
            except Exception as exc:  # a backend bug must not stop the worker either
                failures += 1
                # Capped low: after an outage, work resumes within a few seconds of the store.
                delay = min(self.poll_interval * 2 ** min(failures - 1, 6), 5.0)
                log.warning("claim failed (%s); retrying in %.1f s", exc, delay)
                await self._idle(delay, wait_for_work=False)
                continue
            for claim in claims:
                self._launch(claim)
            if len(claims) < free:
                await self._idle(self.poll_interval, wait_for_work=True)

    def _on_slot_freed(self) -> None:
        self._slot_freed.set()

    async def _idle(self, timeout: float, *, wait_for_work: bool) -> None:
        if self._stopping:
            return
        self._waiting_for_work = True
        try:
            if wait_for_work:
                await self.backend.wait_for_work(self.queues, timeout)
            else:
                await asyncio.sleep(timeout)
        except Exception as exc:
            log.warning("waiting for work failed: %s", exc)
            await asyncio.sleep(min(timeout, 1.0))
        finally:
            self._waiting_for_work = False

    def _launch(self, claim: Claim) -> None:
        self.counters["claimed"] += 1
        held = _Held(claim=claim, ref=claim.ref)
        previous = self._held.get(claim.task_id)
        if previous is not None and previous.task is not None:
            # Our own earlier claim of this task expired and we claimed it again.
            previous.stop_reason = StopReason.LOST
            previous.task.cancel()
        self._held[claim.task_id] = held
        self._executing += 1
        if self.metrics is not None:
            held.series = self.metrics.started(claim.queue, claim.function)
        held.task = asyncio.create_task(self._execute(held), name=f"sitq-task-{claim.task_id}")

    # -- running one task -------------------------------------------------------------------

    async def _execute(self, held: _Held) -> None:
        try:
            settlement = await self._run(held)
        finally:
            self._executing -= 1
            self._slot_freed.set()
        if settlement is None:
            if held.series is not None:
                lost = held.stop_reason is StopReason.LOST
                self._count(held, "lost" if lost else "abandoned")
            self._forget(held)
        else:
            held.settling = True
            self._pending.append((held, settlement))
            self._settle_wanted.set()

    async def _run(self, held: _Held) -> Settlement | None:
        """Run one claimed task to the settlement that records how it ended (``None``: record
        nothing), logged and traced. Cancelling the coroutine stops the task for
        ``held.stop_reason``."""
        claim = held.claim
        settlement: Settlement | None
        try:
            settlement = await self._attempt(held)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            settlement = self._after_stop(held)
        except Exception as exc:  # an engine bug must not kill the worker or lose the task
            log.exception("internal error running task %s", claim.task_id)
            settlement = self._finish(
                held, TaskStatus.FAILED, None, f"sitq internal error: {exc!r}", None
            )
        held.duration = time.monotonic() - held.started
        logs.outcome(
            held.claim, settlement, held.stop_reason, held.duration, timed_out=held.timed_out
        )
        if held.trace is not None:
            held.trace.end(settlement, held.stop_reason, timed_out=held.timed_out)
        return settlement

    async def _attempt(self, held: _Held) -> Settlement | None:
        claim = held.claim
        problem = _unreadable(claim)
        if problem is not None:
            self.counters["failed"] += 1
            error = f"the stored task record is unreadable: {problem}"
            return self._finish(held, TaskStatus.FAILED, None, error, None)
        try:
            opts = parse_engine_options(claim.options)
        except Exception as exc:
            return self._finish(
                held, TaskStatus.FAILED, None, f"cannot read task options: {exc}", None
            )
        lost = claim.attempts - 1 - claim.retries
        if lost >= opts.max_deliveries:
            return self._finish(
                held,
                TaskStatus.FAILED,
                None,
                f"WorkerLost: the task was started {lost} times and each time its worker was "
                f"lost before it finished (max_deliveries={opts.max_deliveries}); it is failed "
                "instead of being started again",
                None,
            )
        if claim.cancel_requested:
            return self._finish(held, TaskStatus.CANCELLED, None, "cancelled while running", None)
        if opts.rate is not None:
            # The last step before the task starts: the slot counts this start.
            wait = await self._take_rate_slot(held, opts.rate)
            if wait is not None:
                self.counters["rate_limited"] += 1
                return Release(held.ref, delay=wait)
        context = TaskContext(
            task_id=claim.task_id,
            queue=claim.queue,
            attempt=claim.attempts,
            function=claim.function,
            worker_id=self.worker_id,
            _report=held.report,
        )
        logs.started(claim)
        trace = held.trace = tracing.processing(claim, self.worker_id)
        with running(context):
            if trace is None:
                outcome = await self.executor.run(
                    claim.payload, opts.timeout, task_id=claim.task_id, context=context
                )
            else:
                with trace:
                    outcome = await self.executor.run(
                        claim.payload, opts.timeout, task_id=claim.task_id, context=context
                    )
                trace.outcome = outcome
        held.timed_out = outcome.timed_out
        if outcome.ok:
            self.counters["succeeded"] += 1
            return self._finish(held, TaskStatus.SUCCESS, outcome.value, None, None)
        delay = None
        if not outcome.permanent:
            delay = opts.retry.decide(
                claim.retries + 1, outcome.exc_types, outcome.retry_delay, outcome.retry_requested
            )
        if delay is not None:
            self.counters["retried"] += 1
            # A finite but huge delay is held at the latest ETA every backend stores.
            eta = min(self._clock() + delay, MAX_ETA_TIMESTAMP)
            return Reschedule(held.ref, eta, outcome.error, outcome.traceback)
        self.counters["failed"] += 1
        return self._finish(held, TaskStatus.FAILED, None, _error_line(outcome), outcome.traceback)

    async def _take_rate_slot(self, held: _Held, rate: RateLimit) -> float | None:
        """Take the rate's gap and one of its slots for this start (``None``), or say how many
        seconds until they may free. The gap is a lock held for ``period / count``: starts come
        one per gap, spread over the period, not ``count`` at once. A slot is a lock held for
        the rate's period (and ``RATE_START_MARGIN``): at most ``rate.count`` starts hold one in
        any period, whichever workers they are on, however late a task takes up its start.
        Neither is released. The backend judges the locks' times by its own clock; this
        worker's clock only measures how long to leave the rate alone after finding them
        held."""
        now = time.monotonic()
        until = self._rate_full.get(rate)
        if until is not None:
            if until > now:
                return until - now
            del self._rate_full[rate]
        claim = held.claim
        token = f"{self.worker_id}:{claim.task_id}:{claim.fencing_token}"
        try:
            taken, wait = await self.backend.acquire_any_lock((rate.gap_name,), token, rate.gap)
            if taken is not None:
                taken, wait = await self.backend.acquire_any_lock(
                    rate.slot_names, token, rate.period + RATE_START_MARGIN
                )
        except Exception as exc:
            log.warning(
                "taking a slot of rate limit %s of key %r failed (%s); task %s waits %.1f s",
                rate.text,
                rate.key,
                exc,
                claim.task_id,
                self.poll_interval,
            )
            return self.poll_interval
        if taken is not None:
            return None
        # Never 0: the task goes back behind the ones already due.
        wait = max(wait, _RATE_WAIT_MIN)
        if len(self._rate_full) >= _RATE_FULL_MAX:
            self._rate_full = {r: t for r, t in self._rate_full.items() if t > now}
        self._rate_full[rate] = now + wait
        return wait

    def _after_stop(self, held: _Held) -> Settlement | None:
        reason = held.stop_reason
        if reason is StopReason.CANCELLED:
            return self._finish(held, TaskStatus.CANCELLED, None, "cancelled while running", None)
        if reason is StopReason.SHUTDOWN:
            self.counters["released"] += 1
            return Release(held.ref)
        return None  # lost lease, or abandoned at a hard stop: the lease brings it back

    def _finish(
        self,
        held: _Held,
        status: TaskStatus,
        value: bytes | None,
        error: str | None,
        traceback: str | None,
    ) -> Finish:
        now = self._clock()
        if status is TaskStatus.FAILED:
            kept = _failure_ttl(held.claim)
            expires = MAX_ETA_TIMESTAMP if kept is None else min(now + kept, MAX_ETA_TIMESTAMP)
            return Finish(held.ref, status, value, error, traceback, now, expires)
        ttl = held.claim.result_ttl
        if _unreadable_ttl(ttl):
            ttl = DEFAULT_RESULT_TTL
        return Finish(held.ref, status, value, error, traceback, now, now + ttl)

    def _count(self, held: _Held, status: str) -> None:
        """Count how the attempt ended (once: its series is let go)."""
        series, held.series = held.series, None
        if series is not None and self.metrics is not None:
            self.metrics.finished(series, status, held.duration)

    def _forget(self, held: _Held) -> None:
        if self._held.get(held.claim.task_id) is held:
            del self._held[held.claim.task_id]

    # -- settling ---------------------------------------------------------------------------

    async def _settle_loop(self) -> None:
        failures = 0
        while True:
            await self._settle_wanted.wait()
            self._settle_wanted.clear()
            while self._pending:
                if await self._settle_batch():
                    failures = 0
                else:
                    failures += 1
                    await asyncio.sleep(min(0.1 * 2**failures, 5.0))

    async def _settle_batch(self) -> bool:
        # One settlement per task per call: after a lost lease this worker may hold an outcome
        # of its old claim and one of its new claim of the same task; the later one waits for
        # the next call (where fencing refuses whichever is stale).
        batch: list[tuple[_Held, Settlement]] = []
        later: list[tuple[_Held, Settlement]] = []
        seen: set[str] = set()
        for item in self._pending:
            task_id = item[1].claim.task_id
            (later if task_id in seen else batch).append(item)
            seen.add(task_id)
        self._pending = later
        try:
            applied = await self.backend.settle([s for _, s in batch])
        except Exception as exc:
            log.warning("recording %d outcomes failed (%s); retrying", len(batch), exc)
            self._pending = batch + self._pending
            return False
        for (held, settlement), ok in zip(batch, applied, strict=True):
            if not ok:
                self.counters["refused"] += 1
                logs.refused(held.claim, time.monotonic() - held.started)
            if held.series is not None:
                self._count(held, _status(held, settlement) if ok else "refused")
            self._forget(held)
        self._settle_progress.set()
        return True

    # -- leases -----------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            await self._save_progress()
            await self._put_record()
            held = list(self._held.values())
            if not held:
                continue
            try:
                states = await self.backend.extend_lease([h.ref for h in held], self.lease)
            except Exception as exc:
                log.warning("extending %d leases failed: %s", len(held), exc)
                continue
            for item, state in zip(held, states, strict=True):
                if state is LeaseState.HELD:
                    continue
                if item.task is None or item.task.done() or item.settling:
                    continue
                if state is LeaseState.LOST:
                    self.counters["lost"] += 1
                    logs.lost(item.claim, time.monotonic() - item.started)
                    item.stop_reason = StopReason.LOST
                    item.task.cancel()
                elif state is LeaseState.CANCEL_REQUESTED and item.stop_reason is None:
                    item.stop_reason = StopReason.CANCELLED
                    item.task.cancel()

    async def _save_progress(self) -> None:
        updates = []
        for held in self._held.values():
            latest = held.progress
            if latest is not None and latest != held.saved_progress and not held.settling:
                updates.append((held, latest))
        if not updates:
            return
        try:
            await self.backend.save_progress(
                [Progress(h.ref, value, message) for h, (value, message) in updates]
            )
        except Exception as exc:
            log.warning("saving the progress of %d tasks failed: %s", len(updates), exc)
            return
        for held, latest in updates:
            held.saved_progress = latest

    def _record(self) -> WorkerRecord:
        now = self._clock()
        data = {
            "hostname": self._hostname,
            "pid": os.getpid(),
            "kind": self.kind,
            "queues": list(self.queues),
            "concurrency": self.concurrency,
            "running": self._executing,
            "processed": self.counters["succeeded"] + self.counters["failed"],
            "failed": self.counters["failed"],
            "started_at": self._started_at,
            "last_seen": now,
        }
        expires = now + (self.lease if math.isfinite(self.lease) else 86_400.0)
        return WorkerRecord(self.worker_id, json.dumps(data).encode(), expires)

    async def _put_record(self) -> None:
        try:
            await self.backend.put_worker(self._record())
        except Exception as exc:
            log.warning("refreshing this worker's record failed: %s", exc)

    async def _purge_loop(self) -> None:
        while True:
            try:
                removed = await self.backend.purge_expired(self._clock())
                if removed:
                    self.counters["purged"] += removed
                    log.debug("removed %d expired results", removed)
            except Exception as exc:
                log.warning("purging expired results failed: %s", exc)
            await asyncio.sleep(self.purge_interval)


def _metrics(metrics: WorkerMetrics | bool | None) -> WorkerMetrics | None:
    if metrics is None or metrics is False:
        return None
    if metrics is True:
        return WorkerMetrics()
    if not isinstance(metrics, WorkerMetrics):
        raise ConfigurationError(
            f"metrics must be True, False or a sitq.observe.metrics.WorkerMetrics, not {metrics!r}"
        )
    return metrics


def _status(held: _Held, settlement: Settlement) -> str:
    """The ``status`` label of a recorded outcome (see ``sitq.observe.metrics.STATUSES``)."""
    if isinstance(settlement, Finish):
        if settlement.status is TaskStatus.SUCCESS:
            return "success"
        if settlement.status is TaskStatus.CANCELLED:
            return "cancelled"
        return "timed_out" if held.timed_out else "failed"
    if isinstance(settlement, Reschedule):
        return "retrying"
    if settlement.delay > 0:
        return "rate_limited"
    return "released"


def _failure_ttl(claim: Claim) -> float | None:
    """How long the claim's task is kept once failed (its own option; the default when its
    options cannot be read)."""
    try:
        return parse_engine_options(claim.options).failure_ttl
    except Exception:
        return DEFAULT_FAILURE_TTL


def _unreadable_ttl(ttl: object) -> bool:
    return isinstance(ttl, bool) or not (isinstance(ttl, int | float) and 0 < ttl < math.inf)


def _unreadable(claim: Claim) -> str | None:
    """What makes a claimed record unusable (fields of the wrong type, as a damaged store can
    hand out), or ``None``: such a task is failed with this, never run on guessed values."""
    if claim.corrupt is not None:
        return claim.corrupt
    if not isinstance(claim.payload, bytes | bytearray | memoryview):
        return f"payload is {_shown(claim.payload)}, not bytes"
    if not isinstance(claim.options, str):
        return f"options is {_shown(claim.options)}, not text"
    for name in ("priority", "attempts", "retries"):
        value = getattr(claim, name)
        if type(value) is not int:
            return f"{name} is {_shown(value)}, not an integer"
    if claim.attempts < 1 or claim.retries < 0:
        return f"attempts is {claim.attempts} and retries {claim.retries}, which no claim makes"
    if type(claim.enqueued_at) not in (int, float) or not math.isfinite(claim.enqueued_at):
        return f"enqueued_at is {_shown(claim.enqueued_at)}, not a timestamp"
    if _unreadable_ttl(claim.result_ttl):
        return f"result_ttl is {_shown(claim.result_ttl)}, not a number of seconds > 0"
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _error_line(outcome: Outcome) -> str:
    return outcome.error or "failed without an error message"


class AsyncWorker(Worker):
    """Awaits coroutine functions on its event loop; runs sync functions in threads."""

    executor_class = AsyncExecutor


class ThreadWorker(Worker):
    """Runs every task in its own pool of ``concurrency`` threads."""

    executor_class = ThreadExecutor
    kind = "thread"


class ProcessWorker(Worker):
    """Runs every task in a pool of ``concurrency`` child processes (default: one per CPU)."""

    executor_class = ProcessExecutor
    kind = "process"

    def __init__(
        self,
        backend: Backend | str | None,
        serializer: Serializer | None = None,
        concurrency: int | None = None,
        *,
        queues: Iterable[str] = ("default",),
        lease: float = 30.0,
        shutdown_timeout: float = 30.0,
        poll_interval: float = 1.0,
        cron: bool = True,
        purge_interval: float = PURGE_INTERVAL,
        metrics: WorkerMetrics | bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            backend,
            serializer,
            concurrency,
            queues=queues,
            lease=lease,
            shutdown_timeout=shutdown_timeout,
            poll_interval=poll_interval,
            cron=cron,
            purge_interval=purge_interval,
            metrics=metrics,
            clock=clock,
        )


WORKER_KINDS: dict[str, type[Worker]] = {
    "async": AsyncWorker,
    "thread": ThreadWorker,
    "process": ProcessWorker,
}
