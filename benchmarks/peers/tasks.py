"""The no-op task functions the peers run (importable, so workers find them by name).

One function per peer: some libraries change the function they register (taskiq renames it),
and others find it by its import path (RQ), so peers run in one process must not share one.
Async wherever the peer runs async tasks; each peer registers its function as ``noop``.
"""

from __future__ import annotations

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
