"""Testing code that uses sitq, with no server and no waiting.

* :class:`TestQueue` and :class:`SyncTestQueue`: a ``TaskQueue`` and a ``SyncTaskQueue`` over
  an in-memory store; code under test uses them as it uses any queue.
* :func:`drain`: runs their due tasks in the test's own thread until none is left (tasks that
  tasks enqueue, retries and cron ticks included) and returns their results.
* :class:`FakeClock`: the time those queues and ``drain`` read; moving it makes ETAs, retries'
  backoff and cron ticks come due without sleeping.
* The pytest plugin (entry point ``sitq``): fixtures ``sitq_queue``, ``sitq_sync_queue`` and
  ``sitq_clock``.

See docs/testing.md.
"""

from __future__ import annotations

from sitq.testing._clock import FakeClock
from sitq.testing._drain import DEFAULT_LIMIT, DrainLimitError, drain
from sitq.testing._queues import SyncTestQueue, TestQueue

__all__ = [
    "DEFAULT_LIMIT",
    "DrainLimitError",
    "FakeClock",
    "SyncTestQueue",
    "TestQueue",
    "drain",
]
