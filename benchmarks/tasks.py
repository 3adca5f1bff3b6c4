"""Task functions the benchmarks enqueue (importable, so they travel by reference)."""

from __future__ import annotations

import asyncio


async def noop() -> None:
    """Do nothing: measures the queue, not the task."""


async def sleep_10ms() -> None:
    """Wait 10 ms without blocking: an I/O-bound task."""
    await asyncio.sleep(0.01)
