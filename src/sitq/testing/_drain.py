"""``drain``: run a test queue's due tasks in the caller's thread until none is left."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Iterable
from datetime import timedelta
from typing import Any, overload

from sitq.cron import CronDefinition
from sitq.errors import ConfigurationError, SitqError
from sitq.executors import InlineExecutor
from sitq.models import Claim, Finish, Release, Result, TaskStatus
from sitq.options import check_queue_name
from sitq.queue import TaskQueue
from sitq.testing._clock import seconds_of
from sitq.testing._queues import SyncTestQueue, TestQueue
from sitq.worker import StopReason, Worker, _Held

DEFAULT_LIMIT = 10_000
"""Tasks one ``drain`` runs at most, unless ``limit=`` says otherwise."""

_PAGE = 1000


class DrainLimitError(SitqError):
    """``drain`` ran ``limit`` tasks and more were still due (a task enqueueing tasks, or
    itself, without end; or a cron schedule driven over a long ``advance``). ``results`` holds
    the results of the tasks that finished before it stopped."""

    def __init__(self, limit: int, results: list[Result]) -> None:
        super().__init__(
            f"drain() ran its limit of {limit} tasks and more are due: a task may enqueue tasks "
            "(or itself) without end; if that many are expected, pass a higher limit="
        )
        self.limit = limit
        self.results = results


class _InlineWorker(Worker):
    """The engine's worker, each task run in the caller's thread (never started: drain drives
    it one claim at a time)."""

    executor_class = InlineExecutor
    kind = "inline"


@overload
def drain(
    queue: SyncTestQueue,
    *,
    limit: int = ...,
    advance: float | timedelta | None = ...,
    queues: Iterable[str] | None = ...,
) -> list[Result]: ...
@overload
def drain(
    queue: TestQueue,
    *,
    limit: int = ...,
    advance: float | timedelta | None = ...,
    queues: Iterable[str] | None = ...,
) -> Coroutine[Any, Any, list[Result]]: ...
def drain(
    queue: TestQueue | SyncTestQueue,
    *,
    limit: int = DEFAULT_LIMIT,
    advance: float | timedelta | None = None,
    queues: Iterable[str] | None = None,
) -> list[Result] | Coroutine[Any, Any, list[Result]]:
    """Run the queue's due tasks, one at a time in this thread, until none is left; return a
    :class:`~sitq.Result` for each task that finished meanwhile, in the order they finished.

    ``await drain(queue)`` for a :class:`TestQueue`; ``drain(queue)`` for a
    :class:`SyncTestQueue`. Tasks that tasks enqueue, due cron ticks, and retries that are due
    at once (a zero backoff) run in the same drain; a task retried later is not finished, so it
    is not in the list until a later drain finishes it.

    ``advance`` (seconds or a timedelta): let that much time pass on the queue's clock while
    draining, as if a worker ran all along: the clock moves from each due time to the next
    (ETAs, retries' backoff, cron ticks), running what comes due at each, and stops at the end.
    Without it the clock stays where it is.

    ``limit``: the most tasks (attempts) it runs; when more are still due after that many, it
    stops and raises :class:`DrainLimitError`. ``queues``: only these queues (default: all).
    """
    if isinstance(queue, SyncTestQueue):
        target = queue.async_queue
    elif isinstance(queue, TestQueue):
        target = queue
    else:
        raise ConfigurationError(
            f"drain() runs the tasks of a sitq.testing.TestQueue or SyncTestQueue, not of "
            f"{queue!r}" + (": workers run those" if isinstance(queue, TaskQueue) else "")
        )
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigurationError(f"drain(limit=...) must be an int >= 1, not {limit!r}")
    seconds = None if advance is None else seconds_of(advance, "drain(advance=...)")
    names = None if queues is None else _queue_names(queues)
    run = _Drain(target, limit, names).run(seconds)
    if isinstance(queue, SyncTestQueue):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return queue._portal_call(run)
        run.close()
        raise ConfigurationError(
            "drain(SyncTestQueue) cannot run where an event loop is already running (an async "
            "test, or a task that drain runs): in async code use TestQueue and "
            "`await drain(queue)`"
        )
    return run


def _queue_names(queues: Iterable[str]) -> tuple[str, ...]:
    if isinstance(queues, str):
        queues = (queues,)
    names = tuple(check_queue_name(q, "drain(queues=...)") for q in queues)
    if not names:
        raise ConfigurationError("drain(queues=...) must name at least one queue")
    return names


class _Drain:
    """One drain of a test queue: its worker engine, and what has run so far."""

    def __init__(self, queue: TestQueue, limit: int, queues: tuple[str, ...] | None) -> None:
        self.queue = queue
        self.backend = queue.backend
        self.clock = queue.clock
        self.limit = limit
        self.wanted = queues
        self.worker = _InlineWorker(
            self.backend,
            queue.serializer,
            concurrency=1,
            queues=queues or (queue.task_options.queue,),
            lease=math.inf,
            cron=False,
            clock=self.clock,
        )
        self.cron = self.worker._cron_driver
        self.ran = 0
        self.results: list[Result] = []

    async def run(self, advance: float | None) -> list[Result]:
        end = None if advance is None else self.clock() + advance
        await self.queue.connect()
        await self.run_due()
        if end is not None:
            while (upcoming := await self.next_due_time()) is not None and upcoming <= end:
                self.clock._move_to(upcoming)
                await self.run_due()
            self.clock._move_to(end)
        return self.results

    async def due_queues(self) -> list[str]:
        """The queues with a task due now."""
        if self.wanted is not None:
            return list(self.wanted)
        stats = await self.backend.stats(self.clock())
        return [s.queue for s in stats if s.pending > 0]

    async def run_due(self) -> None:
        """Run tasks until none is due at the clock's time."""
        names = await self.due_queues()
        while True:
            await self.cron.run_once()
            claims = await self.backend.claim(names, 1, self.worker.worker_id, math.inf)
            if not claims:
                fresh = await self.due_queues()
                if set(fresh) <= set(names):
                    return
                names = fresh
                continue
            (claim,) = claims
            if self.ran >= self.limit:
                await self.backend.settle([Release(claim.ref)])
                raise DrainLimitError(self.limit, self.results)
            self.ran += 1
            await self.run_one(claim)

    async def run_one(self, claim: Claim) -> None:
        """Run one claimed task to its outcome, and record it."""
        held = _Held(claim=claim, ref=claim.ref)
        # Its own asyncio task, shielded, so that cancelling the drain reaches the drain's
        # caller (the engine takes a cancelled attempt as stopped and carries on): the task is
        # then stopped and its claim given back, as at a worker's hard stop.
        attempt = asyncio.ensure_future(self.worker._run(held))
        try:
            settlement = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            held.stop_reason = StopReason.ABANDON
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            await self.backend.settle([Release(held.ref)])
            raise
        if settlement is None:
            return
        (applied,) = await self.backend.settle([settlement])
        if applied and isinstance(settlement, Finish):
            snap = await self.backend.get_task(claim.task_id)
            if snap is not None:
                self.results.append(Result.from_snapshot(snap))

    async def next_due_time(self) -> float | None:
        """The first moment after now when a task (of the drained queues) or a cron tick
        comes due, or ``None``."""
        now = self.clock()
        times: list[float] = []
        after = None
        while True:
            page = await self.backend.list_tasks(TaskStatus.PENDING, None, _PAGE, after, now)
            times.extend(
                snap.eta
                for snap in page.tasks
                if snap.eta > now and (self.wanted is None or snap.queue in self.wanted)
            )
            if page.after is None:
                break
            after = page.after
        for record in await self.backend.list_crons():
            try:
                definition = CronDefinition.decode(record.definition)
                tick = definition.expression.next_after(max(record.last_tick, now))
            except Exception:  # unreadable, or never fires: the cron driver logs it
                continue
            if self.wanted is None or definition.queue in self.wanted:
                times.append(tick)
        return min(times, default=None)
