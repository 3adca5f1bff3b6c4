"""Waiting, written once for every backend: a change signal for "the store may have changed",
result waiters keyed by task id for "this task may have finished", and the loop that waits
for a task's final state.

A backend that can push (PostgreSQL LISTEN, Redis pub/sub, SQLite inotify, a NATS subject)
calls ``ChangeSignal.signal()`` or ``ResultWaiters.finished()`` from its listener; one that
cannot simply polls through ``wait_for_final`` with a growing interval. Either way the wait
re-reads the store after every wake-up, so a push only ever shortens a wait and a lost push
only lengthens it to the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from sitq.models import TaskSnapshot

__all__ = ["ChangeSignal", "Polls", "ResultWaiters", "wait_for_final", "wait_on"]


async def wait_on(event: asyncio.Event, timeout: float) -> None:
    """Wait for ``event`` at most ``timeout`` seconds (not at all for ``timeout <= 0``)."""
    if timeout > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class ChangeSignal:
    """Wakes waiters when the store may have changed: every ``signal()`` ends all the waits on
    the event that was current before it (a generation, so no wake-up is lost between a check
    and the wait that follows it)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._at_claim: asyncio.Event | None = None

    @property
    def current(self) -> asyncio.Event:
        """The event the next ``signal()`` sets; take it *before* checking the store."""
        return self._event

    def signal(self) -> None:
        """Wake everyone waiting on the current generation."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    def mark_claim(self) -> None:
        """Remember the generation at the start of a claim, for the wait that may follow it."""
        self._at_claim = self._event

    def since_claim(self) -> asyncio.Event:
        """The generation of the last claim (or the current one): a change seen after that claim
        began ends a wait for work at once."""
        event, self._at_claim = self._at_claim or self._event, None
        return event

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> None:
        """Wait for ``event`` at most ``timeout`` seconds."""
        await wait_on(event, timeout)


class _Watch:
    """One waiter's event; ``arm()`` before each read of the store."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def arm(self) -> asyncio.Event:
        self.event.clear()
        return self.event


class ResultWaiters:
    """The callers waiting for each task to finish, woken by the backend's done notices."""

    def __init__(self) -> None:
        self._watches: dict[str, list[_Watch]] = {}

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._watches

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[Callable[[], asyncio.Event]]:
        """Register a waiter for ``task_id`` for the duration of the block; yields the ``arm``
        to pass to ``wait_for_final``."""
        watch = _Watch()
        self._watches.setdefault(task_id, []).append(watch)
        try:
            yield watch.arm
        finally:
            watches = self._watches.get(task_id, [])
            if watch in watches:
                watches.remove(watch)
            if not watches:
                self._watches.pop(task_id, None)

    def finished(self, task_ids: Iterable[str]) -> None:
        """Wake the waiters of these tasks (they re-read the store)."""
        for task_id in task_ids:
            for watch in self._watches.get(task_id, ()):
                watch.event.set()

    def wake_all(self) -> None:
        """Wake every waiter: after a lost connection, any task may have finished unheard."""
        for watches in self._watches.values():
            for watch in watches:
                watch.event.set()


@dataclass(frozen=True, slots=True)
class Polls:
    """How often a waiting caller re-reads the store without a wake-up: ``first`` seconds
    after the first read (``None``: ``cap()``), then each wait ``factor`` times the last, up
    to ``cap()`` (read anew at each wait: a backend's listener may come and go)."""

    first: float | None
    cap: Callable[[], float]
    factor: float = 2.0

    @classmethod
    def every(cls, seconds: Callable[[], float]) -> Polls:
        """The interval ``seconds()`` each time."""
        return cls(first=None, cap=seconds)

    @classmethod
    def growing(cls, first: float, cap: float | Callable[[], float]) -> Polls:
        """``first`` seconds, doubling up to ``cap``."""
        return cls(first=first, cap=cap if callable(cap) else (lambda: cap))

    def intervals(self) -> Iterator[float]:
        """The successive waits between reads."""
        if self.first is None:
            while True:
                yield self.cap()
        delay = self.first
        while True:
            yield delay
            delay = min(delay * self.factor, self.cap())


async def wait_for_final(
    read: Callable[[], Awaitable[TaskSnapshot | None]],
    timeout: float,
    *,
    arm: Callable[[], asyncio.Event] | None = None,
    polls: Polls,
    is_open: Callable[[], bool] = lambda: True,
) -> TaskSnapshot | None:
    """Read the task until it is final, unknown, the ``timeout`` passes or the backend closes.

    Before each read, ``arm()`` gives the event a wake-up sets (taken first, so that a notice
    arriving during the read is not lost); between reads the loop waits for it at most the
    next poll interval. Without ``arm`` it only polls.
    """
    deadline = time.monotonic() + timeout
    intervals = polls.intervals()
    idle = asyncio.Event()
    while True:
        event = arm() if arm is not None else idle
        snap = await read()
        remaining = deadline - time.monotonic()
        if snap is None or snap.status.is_final or remaining <= 0 or not is_open():
            return snap
        await wait_on(event, min(next(intervals), remaining))
