"""sitq in a Django project: the ``SITQ`` setting, enqueueing that follows the database
transaction, ``manage.py sitq_worker``, and the tasks in the admin (read-only).

Add ``"sitq.contrib.django"`` to ``INSTALLED_APPS`` and a ``SITQ`` setting::

    SITQ = {"DATABASE": "default"}             # tasks in this PostgreSQL database
    SITQ = {"URL": "redis://localhost:6379/0"}  # or any sitq backend

In a view, :func:`enqueue` (and :func:`enqueue_at`, :func:`enqueue_in`, :func:`options`) ties
the task to the transaction of the database ``SITQ["DATABASE"]`` (default ``"default"``):

* without a URL, the tasks live in that PostgreSQL database, and the insert runs on Django's own
  connection, inside the current transaction: the task exists, and workers hear of it, only if
  the transaction commits;
* with a URL, the task is enqueued by ``transaction.on_commit``: when the transaction commits
  (at once outside a transaction), never if it rolls back.

Either way the task's id is returned at once. :func:`get_queue` is the configured
:class:`~sitq.SyncTaskQueue`, for everything else (``get_status``, ``get_result``,
``list_tasks``, enqueueing that does not wait for any transaction).
"""

from __future__ import annotations

import functools
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import connections, transaction

from sitq._task import check_signature
from sitq.contrib.django._settings import SitqSettings, backend_url, read_settings
from sitq.errors import ConfigurationError
from sitq.sync import SyncOptionsView, SyncTaskQueue

__all__ = [
    "TransactionalEnqueue",
    "close",
    "enqueue",
    "enqueue_at",
    "enqueue_in",
    "get_queue",
    "get_settings",
    "options",
    "queue_url",
]

_lock = threading.Lock()
_settings: SitqSettings | None = None
_queue: SyncTaskQueue | None = None


def get_settings() -> SitqSettings:
    """The ``SITQ`` setting, checked (read once; again after :func:`close`)."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = read_settings()
        return _settings


def queue_url() -> str:
    """The URL of the backend the project's tasks live in (for ``sitq info``, ``sitq web``)."""
    return backend_url(get_settings())


def get_queue() -> SyncTaskQueue:
    """The project's :class:`~sitq.SyncTaskQueue`, made on first use (so after the test runner
    has switched to the test database, and after a server has forked its workers); one per
    process, safe to share between threads."""
    global _queue
    conf = get_settings()
    with _lock:
        if _queue is None:
            _queue = SyncTaskQueue(backend_url(conf), **conf.task_options)
        return _queue


def close() -> None:
    """Close the queue (its connections and background thread) and forget the settings: the
    next call starts afresh. Tests call it before the test database is dropped, since an open
    connection would keep PostgreSQL from dropping it."""
    global _queue, _settings
    with _lock:
        queue, _queue, _settings = _queue, None, None
    if queue is not None:
        queue.close()


class TransactionalEnqueue:
    """``enqueue``, ``enqueue_at`` and ``enqueue_in`` tied to the transaction of the database
    ``SITQ["DATABASE"]``, with some task options set; from :func:`options`."""

    def __init__(self, task_options: dict[str, Any]) -> None:
        self._task_options = task_options

    def options(self, **task_options: Any) -> TransactionalEnqueue:
        """A view with more task options set (``queue``, ``priority``, ``retry``, ...)."""
        return TransactionalEnqueue({**self._task_options, **task_options})

    def enqueue(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
        """Enqueue ``func(*args, **kwargs)`` with the current transaction; the task id."""
        return self._submit(lambda view: view.enqueue(func, *args, **kwargs), func, args, kwargs)

    def enqueue_at(
        self, when: datetime, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> str:
        """Enqueue to run at ``when`` (naive means UTC) with the current transaction."""
        return self._submit(
            lambda view: view.enqueue_at(when, func, *args, **kwargs), func, args, kwargs
        )

    def enqueue_in(
        self, delay: float | timedelta, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> str:
        """Enqueue to run ``delay`` (seconds or a timedelta) after it is stored, with the
        current transaction: the delay counts from the insert in the same transaction, or from
        the commit when the backend has a URL of its own."""
        return self._submit(
            lambda view: view.enqueue_in(delay, func, *args, **kwargs), func, args, kwargs
        )

    def _submit(
        self,
        send: Callable[[SyncOptionsView], str],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> str:
        conf = get_settings()
        queue = get_queue()
        view = queue.options(**self._task_options)
        if conf.same_transaction:
            wrapper = connections[conf.database]
            wrapper.ensure_connection()
            # The same refusal Django gives for a query in a transaction that already failed.
            wrapper.validate_no_broken_transaction()
            return send(view.options(connection=wrapper.connection))
        # Checked now, so that a call that cannot run fails here and not at the commit.
        if not callable(func):
            raise ConfigurationError(f"enqueue needs a callable as the task, not {func!r}")
        bad = check_signature(func, args, kwargs)
        if bad is not None:
            raise ConfigurationError(f"cannot enqueue: {bad}")
        queue.serializer.dumps_call(func, args, kwargs)
        task_id = self._task_options.get("task_id") or str(uuid.uuid4())
        transaction.on_commit(
            functools.partial(send, view.options(task_id=task_id)), using=conf.database
        )
        return str(task_id)


def options(**task_options: Any) -> TransactionalEnqueue:
    """Enqueueing with the current transaction, with task options set:
    ``options(queue="mail", priority=5).enqueue(send, to)``."""
    return TransactionalEnqueue(task_options)


def enqueue(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
    """Enqueue ``func(*args, **kwargs)`` with the current transaction of ``SITQ["DATABASE"]``:
    stored only if it commits. Returns the task id at once."""
    return TransactionalEnqueue({}).enqueue(func, *args, **kwargs)


def enqueue_at(when: datetime, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> str:
    """:func:`enqueue`, to run at ``when`` (naive means UTC)."""
    return TransactionalEnqueue({}).enqueue_at(when, func, *args, **kwargs)


def enqueue_in(
    delay: float | timedelta, func: Callable[..., Any], /, *args: Any, **kwargs: Any
) -> str:
    """:func:`enqueue`, to run ``delay`` (seconds or a timedelta) after it is stored."""
    return TransactionalEnqueue({}).enqueue_in(delay, func, *args, **kwargs)
