"""sitq's pytest plugin: ready fixtures for testing code that uses sitq (see ``sitq.testing``).

pytest loads it through the ``pytest11`` entry point ``sitq`` (``-p no:sitq`` turns it off). It
is a module of its own, outside the ``sitq`` package, and imports sitq only inside a fixture: a
test session that uses none of them pays nothing for it, and nothing else changes.

* ``sitq_clock``: a :class:`sitq.testing.FakeClock`, the one both queue fixtures read.
* ``sitq_queue``: a :class:`sitq.testing.TestQueue` (async): ``await drain(sitq_queue)``.
* ``sitq_sync_queue``: a :class:`sitq.testing.SyncTestQueue`: ``drain(sitq_sync_queue)``;
  closed after the test.

All three are plain (sync) fixtures, so they work with pytest-asyncio in any mode, with
another async plugin, or with none.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sitq.testing import FakeClock, SyncTestQueue, TestQueue


@pytest.fixture
def sitq_clock() -> FakeClock:
    """The fake clock of this test's sitq queues; it starts at the real time."""
    from sitq.testing import FakeClock

    return FakeClock()


@pytest.fixture
def sitq_queue(sitq_clock: FakeClock) -> TestQueue:
    """An async in-memory :class:`~sitq.testing.TestQueue` on ``sitq_clock``."""
    from sitq.testing import TestQueue

    return TestQueue(clock=sitq_clock)


@pytest.fixture
def sitq_sync_queue(sitq_clock: FakeClock) -> Iterator[SyncTestQueue]:
    """A blocking in-memory :class:`~sitq.testing.SyncTestQueue` on ``sitq_clock``."""
    from sitq.testing import SyncTestQueue

    queue = SyncTestQueue(clock=sitq_clock)
    try:
        yield queue
    finally:
        queue.close()
