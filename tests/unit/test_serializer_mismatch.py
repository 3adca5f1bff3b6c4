"""A worker reading payloads of the other serializer fails the task with an error that names
the mismatch and the flag that fixes it (and keeps working)."""

from __future__ import annotations

import pytest

from sitq import (
    AsyncWorker,
    JsonSerializer,
    MemoryBackend,
    PickleSerializer,
    SerializationError,
    TaskQueue,
    TaskStatus,
)
from tests.conformance import tasks


@pytest.mark.parametrize(
    ("enqueued_with", "worker_reads", "fix"),
    [
        (JsonSerializer(), PickleSerializer(), "--serializer json"),
        (PickleSerializer(), JsonSerializer(), "--serializer pickle"),
    ],
    ids=["json-enqueued-pickle-worker", "pickle-enqueued-json-worker"],
)
async def test_mismatch_is_named_with_its_fix(
    enqueued_with: object, worker_reads: object, fix: str
) -> None:
    backend = MemoryBackend()
    async with TaskQueue(backend, enqueued_with) as queue:  # type: ignore[arg-type]
        task_id = await queue.enqueue(tasks.add, 1, 2)
        async with AsyncWorker(backend, worker_reads, poll_interval=0.05):  # type: ignore[arg-type]
            result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status is TaskStatus.FAILED
    assert result.error is not None and fix in result.error
    assert "serializer" in result.error and result.attempts == 1


def test_the_serializers_refuse_each_others_payloads() -> None:
    call = (tasks.add, (1, 2), {})
    with pytest.raises(SerializationError, match="--serializer json"):
        PickleSerializer().loads_call(JsonSerializer().dumps_call(*call))
    with pytest.raises(SerializationError, match="--serializer pickle"):
        JsonSerializer().loads_call(PickleSerializer().dumps_call(*call))
