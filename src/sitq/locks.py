"""Distributed locks on any backend: ``async with queue.lock("name"):``.

A lock is the backend's record of (name, owner token, expiry). Acquiring retries with a growing
interval (a few milliseconds up to a quarter second) until ``timeout``; while the block runs, a
background task extends the expiry every third of the TTL, so a long block keeps its lock and a
holder that dies (or is frozen) loses it once the TTL runs out. Only the token that holds a lock
can extend or release it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Self

from sitq.cron import check_cron_name
from sitq.errors import ConfigurationError, LockTimeout, check_seconds

if TYPE_CHECKING:
    from sitq.queue import TaskQueue

log = logging.getLogger("sitq.locks")

_FIRST_RETRY = 0.005
_MAX_RETRY = 0.25


def _seconds(name: str, value: float, minimum: float) -> float:
    seconds = check_seconds(f"lock {name}", value, allow_zero=True, allow_inf=True)
    if seconds < minimum:
        raise ConfigurationError(
            f"lock {name} must be a number of seconds >= {minimum}, not {value!r}"
        )
    return seconds


class Lock:
    """A distributed lock; use it as ``async with queue.lock(name, ttl=30, timeout=10):``.

    ``ttl``: seconds the lock outlives a holder that stopped extending it (it is extended every
    ``ttl / 3`` while held). ``timeout``: seconds to wait for it before :class:`LockTimeout`
    (``0`` tries once). ``held`` turns ``False`` if an extension found the lock taken over (the
    holder was frozen past its TTL); the block is not interrupted, so guard writes that must not
    overlap with a check of ``held`` or with the store's own transactions.
    """

    def __init__(self, queue: TaskQueue, name: str, ttl: float = 30.0, timeout: float = 10.0):
        self.name = check_cron_name(name, "lock name")
        self.ttl = _seconds("ttl", ttl, 0.01)
        self.timeout = _seconds("timeout", timeout, 0.0)
        self.token = uuid.uuid4().hex
        self._queue = queue
        self._held = False
        self._keeper: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        """True while this lock is held and its last extension succeeded."""
        return self._held

    async def acquire(self) -> None:
        """Wait for the lock; raises :class:`LockTimeout` if not acquired within ``timeout``."""
        if self._held:
            raise ConfigurationError(f"lock {self.name!r} is already held by this Lock object")
        await self._queue.connect()
        backend = self._queue.backend
        deadline = time.monotonic() + self.timeout
        delay = _FIRST_RETRY
        while not await backend.acquire_lock(self.name, self.token, self.ttl):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(
                    f"lock {self.name!r} was not acquired within {self.timeout} s: "
                    "another holder has it"
                )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_RETRY)
        self._held = True
        self._keeper = asyncio.create_task(self._keep(), name=f"sitq-lock-{self.name}")

    async def release(self) -> None:
        """Stop extending and release the lock (a no-op if it was lost or never held)."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if self._held:
            self._held = False
            if not await self._queue.backend.release_lock(self.name, self.token):
                log.warning("lock %r had expired before it was released", self.name)

    async def _keep(self) -> None:
        interval = self.ttl / 3
        failures = 0
        while True:
            await asyncio.sleep(interval)
            try:
                extended = await self._queue.backend.extend_lock(self.name, self.token, self.ttl)
            except Exception as exc:
                failures += 1
                log.warning("extending lock %r failed (%s); retrying", self.name, exc)
                continue
            failures = 0
            if not extended:
                self._held = False
                log.error(
                    "lock %r was lost: its TTL of %.1f s ran out before it could be extended",
                    self.name,
                    self.ttl,
                )
                return

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()

    def __repr__(self) -> str:
        return f"Lock({self.name!r}, ttl={self.ttl}, held={self._held})"
