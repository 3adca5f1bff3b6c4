"""Each test starts with the task module's notes empty."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.testing import tasks


@pytest.fixture(autouse=True)
def _fresh_notes() -> Iterator[None]:
    tasks.RUNS.clear()
    tasks.FAILURES_LEFT.clear()
    tasks.QUEUE.clear()
    tasks.STARTED.clear()
    yield
    tasks.QUEUE.clear()
