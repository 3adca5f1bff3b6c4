"""What a backend object is asked to do, for tests that check how often a worker or a waiter
goes to the store: each public coroutine method of one backend object is wrapped to log its
calls. Every call still runs the real method on the real backend; nothing is faked.

It also holds ``slow_fallback``, which spaces out the re-reads a backend makes to cover a push
it may have missed, so that a test can tell a push from a poll.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sitq.backends.base import Backend


@dataclass
class Call:
    """One call: the method, when it began and ended (``time.monotonic()``), and whether it
    returned (``False``: it raised)."""

    name: str
    began: float
    ended: float | None = None
    ok: bool | None = None


class CallLog:
    """Logs every call of the public coroutine methods of ``backend`` (this object only)."""

    def __init__(self, backend: Backend) -> None:
        self.calls: list[Call] = []
        for name, _ in inspect.getmembers(type(backend), inspect.iscoroutinefunction):
            if not name.startswith("_"):
                setattr(backend, name, self._logged(name, getattr(backend, name)))

    def _logged(
        self, name: str, method: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            entry = Call(name, time.monotonic())
            self.calls.append(entry)
            try:
                result = await method(*args, **kwargs)
            except BaseException:
                entry.ended, entry.ok = time.monotonic(), False
                raise
            entry.ended, entry.ok = time.monotonic(), True
            return result

        return call

    def clear(self) -> None:
        """Forget the calls so far."""
        self.calls = []

    def counts(self) -> Counter[str]:
        """Calls per method."""
        return Counter(call.name for call in self.calls)

    def began(self, name: str) -> list[float]:
        """When each call of ``name`` began."""
        return [call.began for call in self.calls if call.name == name]

    def in_progress(self, name: str) -> bool:
        """Whether a call of ``name`` is under way now."""
        return any(call.ended is None for call in self.calls if call.name == name)


#: The backends whose waiters re-read the store at intervals capped by ``_poll_cap()``, to cover
#: a missed push (a notification sent while the listening connection was down, say).
_CAPPED_FALLBACK = {"sqlite", "postgres", "redis"}


def slow_fallback(backend_name: str, backend: Backend, seconds: float) -> None:
    """Space this backend object's fallback re-reads out to ``seconds``, so that in a test only a
    push can wake its waiters within a deadline well below that.

    Redis and PostgreSQL re-read at least every second even while listening, and every 100 ms
    while not; SQLite's result waiters re-read at a growing interval capped at 1 s (0.2 s
    without inotify). A worker's idle wait is its ``poll_interval`` on every backend, capped by
    the same fallback on Redis and PostgreSQL. The memory backend does not poll; NATS result
    waiters re-read at an interval growing from 0.5 s to 5 s, which a test waits out instead.
    """
    if backend_name.split("-")[0] in _CAPPED_FALLBACK:
        assert hasattr(backend, "_poll_cap"), (
            f"{type(backend).__name__}._poll_cap() is gone: make slow_fallback space the "
            "fallback re-reads out another way"
        )
        backend._poll_cap = lambda: seconds  # type: ignore[method-assign]
