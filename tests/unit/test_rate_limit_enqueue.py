"""Rate limit options are refused at ``options()`` and at enqueue, before anything is stored."""

from __future__ import annotations

import pytest

from sitq import ConfigurationError, MemoryBackend, TaskQueue


def add(x: int, y: int) -> int:
    return x + y


async def test_bad_rate_limits_are_refused_at_options_and_nothing_is_stored() -> None:
    async with TaskQueue(MemoryBackend()) as queue:
        with pytest.raises(ConfigurationError, match="'20/x' is not a rate"):
            queue.options(rate_limit="20/x", rate_key="api")
        with pytest.raises(ConfigurationError, match="needs rate_key"):
            queue.options(rate_limit="20/s")
        with pytest.raises(ConfigurationError, match="needs rate_limit"):
            TaskQueue(MemoryBackend(), rate_key="api")
        assert await queue.stats() == []


async def test_a_rate_limited_task_is_enqueued_with_its_rate() -> None:
    async with TaskQueue(MemoryBackend()) as queue:
        view = queue.options(rate_limit="100/m", rate_key="api.example.com")
        assert view.task_options.rate_limit == "100/m"
        task_id = await view.enqueue(add, 1, 2)
        assert (await queue.stats())[0].pending == 1
        assert task_id
