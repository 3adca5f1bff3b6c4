"""The types of enqueueing and reading results (docs/types.md), checked by mypy.

Every ``enqueue*`` checks the task's arguments against the function's parameters and returns a
``TaskId[R]``, ``R`` being what the function returns (what it resolves to for a coroutine
function); ``get_value`` of a ``TaskId[R]`` is an ``R``. A call marked ``# type: ignore[...]``
must be an error: if it stops being one, mypy reports the ignore as unused. Each such line holds
one wrong call, so that every expectation stands on its own.

The functions below are never run; importing the module is harmless.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, assert_type

from sitq import (
    Result,
    SyncTaskQueue,
    TaskId,
    TaskInfo,
    TaskOptionsView,
    TaskQueue,
    TaskStatus,
)
from sitq.sync import SyncOptionsView

WHEN = datetime(2030, 1, 1, tzinfo=UTC)


def add(a: int, b: int) -> int:
    return a + b


def greet(name: str, *, punctuation: str = "!") -> str:
    return f"Hello, {name}{punctuation}"


async def fetch(url: str, retries: int = 3) -> bytes:
    return url.encode() * retries


async def ping() -> None:
    return None


def total(*values: int, **weights: float) -> float:
    return sum(values) + sum(weights.values())


def takes_the_queue_s_names(func: str, when: int, delay: float) -> str:
    return f"{func}{when}{delay}"


class Scale:
    def __call__(self, value: float) -> float:
        return value * 2


class AsyncScale:
    async def __call__(self, value: float) -> float:
        return value * 2


def untyped(a, b):  # type: ignore[no-untyped-def]
    return a


async def queue_enqueue(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(add, 1, 2)
    assert_type(task_id, TaskId[int])
    assert_type(await queue.get_value(task_id), int)
    assert_type(await queue.get_value(task_id, timeout=5), int)
    assert_type(await queue.enqueue(add, a=1, b=2), TaskId[int])
    assert_type(await queue.enqueue(greet, "World", punctuation="?"), TaskId[str])
    assert_type(await queue.enqueue(total, 1, 2, x=0.5), TaskId[float])
    assert_type(await queue.enqueue(total), TaskId[float])
    # The queue's own parameters are positional-only: a task may have parameters of these names.
    assert_type(
        await queue.enqueue(takes_the_queue_s_names, func="f", when=1, delay=0.5), TaskId[str]
    )
    assert_type(await queue.enqueue(Scale(), 1.5), TaskId[float])
    assert_type(await queue.enqueue(functools.partial(add, 1), 2), TaskId[int])
    assert_type(await queue.enqueue(lambda: "x"), TaskId[str])

    await queue.enqueue(add, 1, "2")  # type: ignore[call-overload]
    await queue.enqueue(add, 1)  # type: ignore[call-overload]
    await queue.enqueue(add, 1, 2, 3)  # type: ignore[call-overload]
    # A wrong keyword is reported against the first (coroutine function) form, hence two codes.
    await queue.enqueue(add, 1, c=2)  # type: ignore[call-arg, arg-type]
    await queue.enqueue(greet, "World", "?")  # type: ignore[call-overload]
    await queue.enqueue(greet, "World", punctuation=1)  # type: ignore[arg-type]
    await queue.enqueue(total, "1")  # type: ignore[call-overload]
    await queue.enqueue(total, x="heavy")  # type: ignore[call-overload]
    await queue.enqueue(Scale(), "1.5")  # type: ignore[call-overload]
    await queue.enqueue(42)  # type: ignore[call-overload]
    await queue.enqueue()  # type: ignore[call-overload]


async def queue_enqueue_at_and_in(queue: TaskQueue) -> None:
    assert_type(await queue.enqueue_at(WHEN, add, 1, 2), TaskId[int])
    assert_type(await queue.enqueue_at(WHEN, fetch, "https://example.org"), TaskId[bytes])
    assert_type(await queue.enqueue_in(30, add, 1, b=2), TaskId[int])
    assert_type(await queue.enqueue_in(1.5, fetch, "u", retries=1), TaskId[bytes])
    assert_type(await queue.enqueue_in(timedelta(minutes=5), greet, "x"), TaskId[str])

    await queue.enqueue_at(WHEN, add, 1, "2")  # type: ignore[call-overload]
    await queue.enqueue_at(WHEN, add, 1)  # type: ignore[call-overload]
    await queue.enqueue_at(WHEN, add, 1, 2, 3)  # type: ignore[call-overload]
    await queue.enqueue_at("2030-01-01", add, 1, 2)  # type: ignore[call-overload]
    await queue.enqueue_at(add, 1, 2)  # type: ignore[call-overload]
    await queue.enqueue_in(30, add, "1", 2)  # type: ignore[call-overload]
    await queue.enqueue_in(30, add)  # type: ignore[call-overload]
    await queue.enqueue_in(30, add, 1, 2, 3)  # type: ignore[call-overload]
    await queue.enqueue_in(30, fetch, "u", retries="3")  # type: ignore[arg-type]
    await queue.enqueue_in("30s", add, 1, 2)  # type: ignore[call-overload]
    await queue.enqueue_in(add, 1, 2)  # type: ignore[call-overload]


async def coroutine_functions_are_unwrapped(queue: TaskQueue) -> None:
    fetched = await queue.enqueue(fetch, "https://example.org")
    assert_type(fetched, TaskId[bytes])
    assert_type(await queue.get_value(fetched), bytes)
    assert_type(await queue.enqueue(ping), TaskId[None])
    assert_type(await queue.enqueue(AsyncScale(), 2.0), TaskId[float])
    assert_type(await queue.enqueue(functools.partial(fetch, retries=1), "u"), TaskId[bytes])

    await queue.enqueue(fetch)  # type: ignore[call-overload]
    await queue.enqueue(fetch, b"https://example.org")  # type: ignore[call-overload]
    await queue.enqueue(fetch, "u", 3, 4)  # type: ignore[call-overload]
    await queue.enqueue(ping, 1)  # type: ignore[call-overload]


async def options_views(queue: TaskQueue) -> None:
    view = queue.options(priority=5, queue="emails")
    assert_type(view, TaskOptionsView)
    assert_type(view.options(timeout=10), TaskOptionsView)
    assert_type(await view.enqueue(add, 1, 2), TaskId[int])
    assert_type(await view.enqueue(fetch, "u"), TaskId[bytes])
    assert_type(await view.enqueue_at(WHEN, greet, "x"), TaskId[str])
    assert_type(await view.enqueue_in(5, fetch, "u"), TaskId[bytes])
    assert_type(await queue.options(retry=None).enqueue(add, 1, b=2), TaskId[int])

    await view.enqueue(add, 1, "2")  # type: ignore[call-overload]
    await view.enqueue(add, 1)  # type: ignore[call-overload]
    await view.enqueue(add, 1, 2, 3)  # type: ignore[call-overload]
    await view.enqueue_at(WHEN, add, "1", 2)  # type: ignore[call-overload]
    await view.enqueue_at(WHEN, add, 1, 2, 3)  # type: ignore[call-overload]
    await view.enqueue_in(5, fetch, 1)  # type: ignore[call-overload]
    await view.enqueue_in(5, fetch)  # type: ignore[call-overload]
    await queue.options(priority=1).enqueue(add, "1", 2)  # type: ignore[call-overload]
    await queue.options(priority=1).enqueue(add, 1, 2, 3)  # type: ignore[call-overload]


async def results_keep_their_types(queue: TaskQueue) -> None:
    task_id = await queue.enqueue(add, 1, 2)
    assert_type(await queue.get_result(task_id), Result | None)
    assert_type(await queue.get_result(task_id, timeout=1), Result | None)
    assert_type(await queue.get_status(task_id), TaskStatus | None)
    assert_type(await queue.get_task(task_id), TaskInfo | None)
    assert_type(await queue.cancel(task_id), bool)
    assert_type(await queue.requeue(task_id), bool)

    # An id read from elsewhere is a plain str: its value is Any, and TaskId(text) names a type.
    assert_type(await queue.get_value("0b6e4c1e"), Any)
    assert_type(await queue.get_value(TaskId[int]("0b6e4c1e")), int)
    # A TaskId is a str, wherever a str is wanted; and a TaskId[bool] is a TaskId[int].
    text: str = task_id
    assert_type(json.dumps(task_id), str)
    assert_type(task_id.upper(), str)
    flag = await queue.enqueue(lambda: True)
    widened: TaskId[int] = flag
    assert_type(await queue.get_value(widened), int)

    value = await queue.get_value(task_id)
    narrowed: TaskId[str] = task_id  # type: ignore[assignment]
    wrong: str = value  # type: ignore[assignment]
    await queue.get_value(42)  # type: ignore[call-overload]
    del text, narrowed, wrong


async def untyped_and_dynamic_callables(queue: TaskQueue, func: Callable[..., Any]) -> None:
    # An unannotated function's parameters are still counted; its value is Any.
    assert_type(await queue.enqueue(untyped, 1, 2), TaskId[Any])
    await queue.enqueue(untyped, 1)  # type: ignore[call-overload]
    # What a type checker cannot see into it does not check (the check at enqueue, at run
    # time, still does): the arguments of a Callable[..., Any] and those left to a
    # functools.partial go through.
    assert_type(await queue.enqueue(func, 1, "two", three=3), TaskId[Any])
    assert_type(await queue.enqueue(functools.partial(add, 1), "2"), TaskId[int])


async def enqueue_many(queue: TaskQueue) -> None:
    # Calls given as tuples carry no types to check or pass on: the ids are plain strings (so a
    # list[str] they go to stays one), their values Any; the shape of each item is checked.
    ids = await queue.enqueue_many([(add, (1, 2)), (greet, ("x",), {"punctuation": "."})])
    assert_type(ids, list[str])
    assert_type(await queue.get_value(ids[0]), Any)
    assert_type(await queue.options(queue="bulk").enqueue_many([(add, [1, 2])]), list[str])

    await queue.enqueue_many([add])  # type: ignore[list-item]
    await queue.enqueue_many([(add, (1, 2), "kwargs")])  # type: ignore[list-item]


def sync_queue(queue: SyncTaskQueue) -> None:
    task_id = queue.enqueue(add, 1, 2)
    assert_type(task_id, TaskId[int])
    assert_type(queue.get_value(task_id), int)
    assert_type(queue.get_value(task_id, timeout=5), int)
    assert_type(queue.get_value("0b6e4c1e"), Any)
    assert_type(queue.enqueue(fetch, "u"), TaskId[bytes])
    assert_type(queue.get_value(queue.enqueue(fetch, "u")), bytes)
    assert_type(queue.enqueue(ping), TaskId[None])
    assert_type(queue.enqueue_at(WHEN, greet, "x", punctuation="."), TaskId[str])
    assert_type(queue.enqueue_in(5, fetch, "u", 2), TaskId[bytes])
    assert_type(queue.enqueue_many([(add, (1, 2))]), list[str])
    assert_type(queue.get_result(task_id), Result | None)
    assert_type(queue.get_status(task_id), TaskStatus | None)
    assert_type(queue.get_task(task_id), TaskInfo | None)
    assert_type(queue.cancel(task_id), bool)

    queue.enqueue(add, 1, "2")  # type: ignore[call-overload]
    queue.enqueue(add, 1)  # type: ignore[call-overload]
    queue.enqueue(add, 1, 2, 3)  # type: ignore[call-overload]
    queue.enqueue(fetch, 1)  # type: ignore[call-overload]
    queue.enqueue(42)  # type: ignore[call-overload]
    queue.enqueue_at(WHEN, add, 1, "2")  # type: ignore[call-overload]
    queue.enqueue_at(WHEN, add, 1, 2, 3)  # type: ignore[call-overload]
    queue.enqueue_in(5, fetch, b"u")  # type: ignore[call-overload]
    queue.enqueue_in(5, fetch)  # type: ignore[call-overload]
    wrong: str = queue.get_value(task_id)  # type: ignore[assignment]
    del wrong


def sync_options_view(queue: SyncTaskQueue) -> None:
    view = queue.options(priority=5)
    assert_type(view, SyncOptionsView)
    assert_type(view.options(timeout=10), SyncOptionsView)
    assert_type(view.enqueue(add, 1, 2), TaskId[int])
    assert_type(view.enqueue(fetch, "u"), TaskId[bytes])
    assert_type(view.enqueue_at(WHEN, add, 1, b=2), TaskId[int])
    assert_type(view.enqueue_in(timedelta(seconds=1), greet, "x"), TaskId[str])
    assert_type(queue.get_value(view.enqueue(fetch, "u")), bytes)

    view.enqueue(add, 1, "2")  # type: ignore[call-overload]
    view.enqueue(add, 1, 2, 3)  # type: ignore[call-overload]
    view.enqueue_at(WHEN, add, "1", 2)  # type: ignore[call-overload]
    view.enqueue_at(WHEN, add)  # type: ignore[call-overload]
    view.enqueue_in(1, fetch, 1)  # type: ignore[call-overload]
    view.enqueue_in(1, fetch, "u", 3, 4)  # type: ignore[call-overload]
