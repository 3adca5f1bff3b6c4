"""docs/contract.md, Bad input never kills a worker: a task that cannot be loaded fails alone; the
worker goes on."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest

from sitq import (
    AsyncWorker,
    ConfigurationError,
    JsonSerializer,
    PickleSerializer,
    ProcessWorker,
    RetryPolicy,
    SerializationError,
    TaskQueue,
    TaskStatus,
    ThreadWorker,
)
from sitq.models import NewTask
from sitq.options import TaskOptions
from sitq.worker import Worker
from tests.conformance import tasks

KINDS: list[type[Worker]] = [AsyncWorker, ThreadWorker, ProcessWorker]


def _raw_task(payload: bytes, options: str | None = None) -> NewTask:
    now = time.time()
    return NewTask(
        id=str(uuid.uuid4()),
        queue="default",
        payload=payload,
        options=options if options is not None else TaskOptions().engine_options(),
        priority=0,
        eta=now,
        enqueued_at=now,
        result_ttl=60,
    )


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
async def test_corrupt_payload_fails_that_task_and_worker_goes_on(
    queue: TaskQueue, kind: type[Worker]
) -> None:
    bad = _raw_task(b"\x80\x05garbage that is not a pickle")
    await queue.backend.enqueue([bad])
    good = await queue.enqueue(tasks.add, 1, 1)
    async with kind(queue.backend, concurrency=1, poll_interval=0.2):
        result = await queue.get_result(bad.id, timeout=20)
        assert await queue.get_value(good, timeout=20) == 2
    assert result is not None and result.status == TaskStatus.FAILED
    assert result.error is not None and "cannot load task" in result.error


async def test_bad_signature_fails_without_retry(queue: TaskQueue) -> None:
    payload = PickleSerializer().dumps_call(tasks.add, (1,), {"z": 3})
    options = TaskOptions(retry=RetryPolicy(max_attempts=5)).engine_options()
    bad = _raw_task(payload, options)
    await queue.backend.enqueue([bad])
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(bad.id, timeout=10)
    assert result is not None and result.status == TaskStatus.FAILED
    assert result.attempts == 1
    assert result.error is not None and "cannot take these arguments" in result.error


async def test_unknown_function_with_json(backends) -> None:  # type: ignore[no-untyped-def]
    queue = TaskQueue(backends.make(), JsonSerializer())
    await queue.connect()
    try:
        payload = json.dumps({"f": "no_such_module_xyz:func", "a": [], "k": {}}).encode()
        bad = _raw_task(payload)
        await queue.backend.enqueue([bad])
        good = await queue.enqueue(tasks.add, 2, 3)
        async with AsyncWorker(queue.backend, JsonSerializer(), poll_interval=0.2):
            result = await queue.get_result(bad.id, timeout=10)
            assert await queue.get_value(good, timeout=10) == 5
        assert result is not None and result.status == TaskStatus.FAILED
        assert "no_such_module_xyz" in (result.error or "")
    finally:
        await queue.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{not json", "cannot read task options"),
        ('{"v": 99}', "format version 99"),
        ("[1, 2]", "not a JSON object"),
    ],
)
async def test_unreadable_options_fail_the_task(
    queue: TaskQueue, options: str, message: str
) -> None:
    bad = _raw_task(PickleSerializer().dumps_call(tasks.add, (1, 2), {}), options)
    await queue.backend.enqueue([bad])
    good = await queue.enqueue(tasks.add, 1, 1)
    async with AsyncWorker(queue.backend, concurrency=1, poll_interval=0.2):
        result = await queue.get_result(bad.id, timeout=10)
        assert await queue.get_value(good, timeout=10) == 2
    assert result is not None and result.status == TaskStatus.FAILED
    assert message in (result.error or "")


async def test_unserializable_return_value_fails_the_task(queue: TaskQueue) -> None:
    import threading

    task_id = await queue.enqueue(threading.Lock)
    async with AsyncWorker(queue.backend, poll_interval=0.2):
        result = await queue.get_result(task_id, timeout=10)
    assert result is not None and result.status == TaskStatus.FAILED
    assert "return value cannot be serialized" in (result.error or "")


def test_json_serializer_rejects_what_it_cannot_carry_at_enqueue() -> None:

    queue = TaskQueue("memory://", JsonSerializer())
    with pytest.raises(SerializationError, match="import path"):
        _run(queue.enqueue(lambda: 1))
    with pytest.raises(SerializationError, match=r"args\[0\]"):
        _run(queue.enqueue(tasks.add, {1, 2}, 3))


def _run(coro):  # type: ignore[no-untyped-def]

    return asyncio.run(coro)


class _TouchOnUnpickle:
    """Unpickling this creates a file: proof that a payload was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_touch, (self.path,))


def _touch(path: str) -> None:
    with open(path, "w") as f:
        f.write("unpickled")


@pytest.mark.parametrize("kind", [AsyncWorker, ProcessWorker], ids=lambda k: k.__name__)
async def test_worker_with_a_secret_refuses_unsigned_payloads(
    queue: TaskQueue, kind: type[Worker], tmp_path: Path
) -> None:
    marker = tmp_path / "unpickled"
    unsigned = PickleSerializer().dumps_call(tasks.add, (_TouchOnUnpickle(str(marker)), 1), {})
    forged = _raw_task(unsigned)
    await queue.backend.enqueue([forged])
    signed_queue = TaskQueue(queue.backend, PickleSerializer(secret=b"s" * 32))
    good = await signed_queue.enqueue(tasks.add, 2, 3)
    async with kind(
        queue.backend, PickleSerializer(secret=b"s" * 32), concurrency=1, poll_interval=0.2
    ):
        result = await queue.get_result(forged.id, timeout=20)
        assert await signed_queue.get_value(good, timeout=20) == 5
    assert result is not None and result.status == TaskStatus.FAILED
    assert "not signed" in (result.error or "")
    assert not marker.exists(), "the unsigned payload must never be unpickled"


async def test_oversized_payload_is_refused_at_enqueue(queue: TaskQueue) -> None:
    with pytest.raises(SerializationError, match="max_payload"):
        await queue.enqueue(tasks.add, b"x" * (2 * 1024 * 1024), b"")
    small = TaskQueue(queue.backend, max_payload=200)
    with pytest.raises(SerializationError, match=r"over max_payload=200"):
        await small.enqueue(tasks.add, "y" * 500, "")
    with pytest.raises(SerializationError):
        await small.add_cron("big", "* * * * *", tasks.add, args=("y" * 500, ""))
    assert await queue.stats() == []
    task_id = await small.enqueue(tasks.add, 1, 2)
    assert await queue.get_status(task_id) is TaskStatus.PENDING
    with pytest.raises(ConfigurationError, match="max_payload"):
        TaskQueue(queue.backend, max_payload=0)
