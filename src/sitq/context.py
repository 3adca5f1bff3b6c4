"""What a running task can know about itself: ``current_task()`` and progress reports.

The worker sets the context around each task it runs, in async, thread and process workers
alike. ``set_progress`` only stores the latest value where the worker can see it; the worker
saves it with its next heartbeat (at most every 2 seconds), so calling it often costs no round
trip to the backend.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from sitq.errors import ConfigurationError, SitqError

__all__ = ["TaskContext", "current_task"]

MAX_PROGRESS_MESSAGE = 1000
"""Characters of a progress message that are kept (a longer one is cut)."""


@dataclass(frozen=True, slots=True, eq=False)
class TaskContext:
    """The running task: its id, queue, attempt (1 for the first run), ``function``
    (``module.qualname``) and the id of the worker running it."""

    task_id: str
    queue: str
    attempt: int
    function: str
    worker_id: str
    _report: Callable[[float, str | None], None] = field(repr=False)

    def set_progress(self, value: float, message: str | None = None) -> None:
        """Report how far the task is, from 0 to 1, with an optional message; shown by
        ``get_task``, ``list_tasks``, ``sitq show`` and the dashboard while the task runs."""
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 <= value <= 1
        ):
            raise ConfigurationError(
                f"set_progress needs a number from 0 to 1 (0.4 for 40%), not {value!r}"
            )
        if message is not None and not isinstance(message, str):
            raise ConfigurationError(f"a progress message must be a str or None, not {message!r}")
        if message is not None and len(message) > MAX_PROGRESS_MESSAGE:
            message = message[: MAX_PROGRESS_MESSAGE - 3] + "..."
        self._report(float(value), message)


_current: ContextVar[TaskContext | None] = ContextVar("sitq_current_task", default=None)


def current_task() -> TaskContext:
    """The :class:`TaskContext` of the task running in this context (coroutine or thread).

    Raises :class:`SitqError` when no sitq task is running here.
    """
    context = _current.get()
    if context is None:
        raise SitqError(
            "current_task() was called outside a running task: call it from the task "
            "function (or code it calls) while a sitq worker runs it"
        )
    return context


@contextlib.contextmanager
def running(context: TaskContext | None) -> Iterator[None]:
    """Make ``context`` the current task for the block (``None``: leave things as they are)."""
    if context is None:
        yield
        return
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)
