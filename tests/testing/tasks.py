"""Task functions the tests of ``sitq.testing`` enqueue; each notes where it ran in ``RUNS``."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import sitq
from sitq import TaskQueue

RUNS: list[dict[str, Any]] = []
"""One entry per call of a task here, in call order (reset by the tests' fixture)."""

FAILURES_LEFT: dict[str, int] = {}
"""How many more times ``flaky(name)`` fails."""


def _note(name: str, **extra: Any) -> None:
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    context = sitq.current_task()
    RUNS.append(
        {
            "name": name,
            "thread": threading.get_ident(),
            "loop": loop,
            "attempt": None if context is None else context.attempt,
            **extra,
        }
    )


def add(x: int, y: int) -> int:
    _note("add", args=(x, y))
    return x + y


async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    _note("async_add", args=(x, y))
    return x + y


def fail(message: str) -> None:
    _note("fail")
    raise ValueError(message)


def flaky(name: str) -> str:
    """Fails while ``FAILURES_LEFT[name]`` is above zero (counting down), then returns."""
    _note("flaky", key=name)
    if FAILURES_LEFT.get(name, 0) > 0:
        FAILURES_LEFT[name] -= 1
        raise ConnectionError(f"{name} is down")
    return f"{name} is up"


def retry_in(delay: float) -> str:
    """Asks for another attempt ``delay`` seconds later, once."""
    _note("retry_in")
    context = sitq.current_task()
    assert context is not None
    if context.attempt == 1:
        raise sitq.Retry(delay=delay)
    return "second time"


QUEUE: dict[str, Any] = {}
"""The queue tasks enqueue into (``QUEUE["q"]``), set by the test."""


async def fan_out(n: int) -> int:
    """Enqueues ``n`` calls of ``add`` through the async queue in ``QUEUE``."""
    _note("fan_out")
    queue: TaskQueue = QUEUE["q"]
    for i in range(n):
        await queue.enqueue(add, i, i)
    return n


def sync_fan_out(n: int) -> int:
    """Enqueues ``n`` calls of ``add`` through the sync queue in ``QUEUE``."""
    _note("sync_fan_out")
    queue = QUEUE["q"]
    for i in range(n):
        queue.enqueue(add, i, 100)
    return n


def sync_reads(task_id: str, timeout: float | None) -> Any:
    """Reads another task's value through the sync queue in ``QUEUE``."""
    _note("sync_reads")
    return QUEUE["q"].get_value(task_id, timeout=timeout)


async def forever(depth: int) -> int:
    """Enqueues itself again, without end."""
    _note("forever", depth=depth)
    await QUEUE["q"].enqueue(forever, depth + 1)
    return depth


async def sleeps(seconds: float) -> str:
    _note("sleeps")
    await asyncio.sleep(seconds)
    return "slept"


def blocks(seconds: float) -> str:
    _note("blocks")
    time.sleep(seconds)
    return "done"


STARTED: dict[str, asyncio.Event] = {}
"""Set by ``waits_forever`` when it starts (the test puts the event in)."""


async def waits_forever() -> None:
    _note("waits_forever")
    STARTED["event"].set()
    await asyncio.Event().wait()
