"""The no-op task functions the peers run (importable, so workers find them by name).

One function per peer: some libraries change the function they register (taskiq renames it),
and others find it by its import path (RQ), so peers run in one process must not share one.
Async wherever the peer runs async tasks; each peer registers its functions as ``noop`` and
``sleep`` (10 ms: ``await asyncio.sleep`` where the peer runs async tasks, else ``time.sleep``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def procrastinate_noop() -> None:
    """Do nothing."""


async def pgqueuer_noop(job: Any) -> None:
    """Do nothing; PgQueuer passes the job."""


async def saq_noop(ctx: Any) -> None:
    """Do nothing; SAQ passes a context dict."""


async def arq_noop(ctx: Any) -> None:
    """Do nothing; arq passes a context dict."""


async def taskiq_noop() -> None:
    """Do nothing."""


async def rq_noop() -> None:
    """Do nothing (RQ runs a coroutine function on a new event loop)."""


async def dramatiq_noop() -> None:
    """Do nothing (through Dramatiq's AsyncIO middleware)."""


def huey_noop() -> None:
    """Do nothing: Huey has no async tasks."""


def celery_noop() -> None:
    """Do nothing: Celery has no async tasks."""


# The I/O-bound workload: wait 10 ms, without blocking where the peer runs async tasks.


async def procrastinate_sleep() -> None:
    """Wait 10 ms."""
    await asyncio.sleep(0.01)


async def pgqueuer_sleep(job: Any) -> None:
    """Wait 10 ms."""
    await asyncio.sleep(0.01)


async def saq_sleep(ctx: Any) -> None:
    """Wait 10 ms."""
    await asyncio.sleep(0.01)


async def arq_sleep(ctx: Any) -> None:
    """Wait 10 ms."""
    await asyncio.sleep(0.01)


async def taskiq_sleep() -> None:
    """Wait 10 ms."""
    await asyncio.sleep(0.01)


async def rq_sleep() -> None:
    """Wait 10 ms (on the event loop RQ makes for the job)."""
    await asyncio.sleep(0.01)


async def dramatiq_sleep() -> None:
    """Wait 10 ms (through Dramatiq's AsyncIO middleware)."""
    await asyncio.sleep(0.01)


def huey_sleep() -> None:
    """Wait 10 ms, blocking its worker thread: Huey has no async tasks."""
    time.sleep(0.01)


def celery_sleep() -> None:
    """Wait 10 ms, blocking its worker thread: Celery has no async tasks."""
    time.sleep(0.01)
