"""The NATS server's clock as this client estimates it: leases, ETAs and lock TTLs are judged
by the server's clock, so that the clocks of the hosts running workers never matter."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Final

from sitq.backends.nats._client import Client
from sitq.backends.nats._jetstream import ack_seq

log = logging.getLogger("sitq.nats")

_CLOCK_STEP: Final = 1.0
"""Seconds by which our clock must disagree with the steady clock to count as stepped."""
_steady = (
    functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    if hasattr(time, "CLOCK_BOOTTIME")
    else time.monotonic
)
"""A clock that no one sets, counting suspended time where the system has one (Linux)."""


class ServerClock:
    """Our clock plus the measured offset of the server's (0 while they agree)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.offset = 0.0
        """Seconds the server's clock is ahead of ours."""
        self._mark = (time.time(), _steady())
        self._remeasure: asyncio.Future[None] | None = None

    async def measure(self) -> None:
        """Estimate the server clock's offset from ours, from the timestamps of writes."""
        client = self._client
        best: tuple[float, float] | None = None
        for _ in range(3):
            t0 = time.time()
            rev = ack_seq(await client.one(client.kv_prefix + "_.clock", b"", None))
            t1 = time.time()
            got = await client.get_by_seq(rev)
            if got is None:
                continue
            offset = got - (t0 + t1) / 2
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, offset)
        if best is not None:
            rtt, offset = best
            # Within the measurement's own uncertainty the clocks agree: keep ours exactly.
            self.offset = offset if abs(offset) > rtt + 0.005 else 0.0
            self._mark = (time.time(), _steady())
            if self.offset:
                log.info("NATS server clock is %.3f s from ours; leases use the server's", offset)

    def forget(self) -> None:
        """Forget a measurement in flight on an event loop that has ended."""
        self._remeasure = None

    async def _measure_again(self) -> None:
        try:
            await self.measure()
        except Exception as exc:
            log.warning("measuring the NATS server's clock again failed: %s", exc)

    def now(self) -> float:
        """The server's time, as far as we know it."""
        now = time.time()
        # Our clock may have been stepped since the offset was measured (NTP, by hand); the
        # server's was not. A step shows against the steady clock: take it out at once, and
        # measure the offset again (which also covers a steady clock that stood still).
        wall, steady = self._mark
        step = (_steady() - steady) - (now - wall)
        if abs(step) > _CLOCK_STEP:
            self.offset += step
            self._mark = (now, _steady())
            log.warning("our clock jumped by %.3f s; measuring the NATS server's again", -step)
            if self._client.nc is not None and (self._remeasure is None or self._remeasure.done()):
                self._remeasure = asyncio.ensure_future(self._measure_again())
        return now + self.offset
