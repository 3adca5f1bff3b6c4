"""The errors sitq raises.

Every error is a subclass of :class:`SitqError`::

    SitqError
    ├── ConfigurationError      a bad argument or option, raised where it is given
    │   └── MissingDependencyError   a backend's optional driver is not installed
    ├── SerializationError      a value the serializer cannot carry (raised at enqueue)
    ├── BackendError            the backend's server or file failed (carries its message)
    ├── TaskNotFound            an id the backend does not know
    ├── TaskFailedError         the task finished as failed or cancelled (get_value)
    └── LockTimeout             a lock was not acquired in time

:class:`Retry` is not an error: a task raises it to ask for another attempt.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, cast, overload


class SitqError(Exception):
    """Base class of every error sitq raises."""


class ConfigurationError(SitqError, ValueError):
    """An argument or option is invalid; the message names it and what would be valid."""


class MissingDependencyError(ConfigurationError, ImportError):
    """A backend's optional dependency is not installed; the message names the ``pip install``."""


class SerializationError(SitqError):
    """The serializer cannot carry a value (or cannot read a payload)."""


class BackendError(SitqError):
    """The backend failed: a connection, server or file error, with the backend's own message."""


class TaskNotFound(SitqError, KeyError):
    """No task with this id is known to the backend."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id

    def __str__(self) -> str:
        return f"no task with id {self.task_id!r} (unknown, or its result has expired)"


class TaskFailedError(SitqError):
    """A task finished without a value: it failed or was cancelled.

    ``error`` is the one-line error, ``remote_traceback`` the traceback from the worker.
    """

    def __init__(
        self, task_id: str, status: str, error: str | None, remote_traceback: str | None
    ) -> None:
        self.task_id = task_id
        self.status = status
        self.error = error
        self.remote_traceback = remote_traceback
        message = f"task {task_id} {status}: {error or 'no error recorded'}"
        if remote_traceback:
            message += f"\n\nRemote traceback:\n{remote_traceback}"
        super().__init__(message)


class LockTimeout(SitqError, TimeoutError):
    """A distributed lock was not acquired within its timeout."""


class Retry(Exception):
    """Raise from a task to ask for another attempt, after ``delay`` seconds if given.

    The attempt counts against the task's ``RetryPolicy.max_attempts``; without a delay the
    policy's backoff decides when the next attempt starts.
    """

    def __init__(self, delay: float | None = None) -> None:
        delay = check_seconds("Retry delay", delay, allow_zero=True, allow_none=True)
        super().__init__(f"retry requested (delay={delay})")
        self.delay = delay


@overload
def check_seconds(
    name: str, value: Any, *, allow_zero: bool = ..., allow_inf: bool = ...
) -> float: ...
@overload
def check_seconds(
    name: str, value: Any, *, allow_zero: bool = ..., allow_inf: bool = ..., allow_none: bool
) -> float | None: ...
def check_seconds(
    name: str,
    value: Any,
    *,
    allow_zero: bool = False,
    allow_inf: bool = False,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a number of seconds: ``> 0`` (``>= 0`` with ``allow_zero``), finite unless
    ``allow_inf``, ``None`` kept with ``allow_none``. Anything else (a bool, a string, NaN) is a
    :class:`ConfigurationError` that names ``name`` and the numbers it takes."""
    if value is None and allow_none:
        return None
    number = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            number = math.inf
    in_range = number >= 0 if allow_zero else number > 0
    if not in_range or (math.isinf(number) and not allow_inf):
        finite = "" if allow_inf else "finite "
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(
            f"{name} must be a {finite}number of seconds {bound}, not {value!r}"
        )
    return number


def wall_clock() -> float:
    """``time.time()``, looked up at each call (a ``time.time`` patched later is seen): the
    engine's clock unless it is given another."""
    return time.time()


def check_clock(clock: Any) -> Callable[[], float]:
    """Where the engine reads the time: ``clock`` (a callable returning POSIX seconds, like
    ``time.time``), or :func:`wall_clock` for ``None``; anything else is a
    :class:`ConfigurationError`."""
    if clock is None:
        return wall_clock
    if not callable(clock):
        raise ConfigurationError(
            f"clock must be a callable returning POSIX seconds (like time.time or "
            f"sitq.testing.FakeClock()), not {clock!r}"
        )
    return cast("Callable[[], float]", clock)
