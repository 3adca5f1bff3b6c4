"""docs/contract.md, Debounce: ``options(task_id=..., debounce=s)`` on every backend. A burst
of calls runs once, after the burst, with the last call's arguments; a call that finds the task
running is dropped; one that finds it finished starts a new run; and the storage step under it,
``Backend.enqueue_replacing``, is atomic against a claim."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sitq import AsyncWorker, ConfigurationError, TaskQueue, TaskStatus
from sitq.backends.base import Backend
from sitq.models import Claim, Finish, LeaseState, NewTask, ReplaceOutcome
from sitq.options import TaskOptions
from tests.conformance import tasks
from tests.conftest import wait_until


def _starts(log_dir: Path, label: str) -> list[dict[str, float]]:
    return tasks.executions(log_dir, label)


async def test_a_burst_runs_once_after_it_with_the_last_call_s_arguments(
    queue: TaskQueue, tmp_path: Path
) -> None:
    debounced = queue.options(task_id="reindex:42", debounce=0.5)
    async with AsyncWorker(queue.backend, poll_interval=0.1):
        began = time.monotonic()
        for item in range(50):
            last_call = time.time()
            await debounced.enqueue(tasks.record_start, str(tmp_path), "burst", item)
            # 50 calls spread over one second, each well inside the previous one's 0.5 s
            await asyncio.sleep(max(0.0, began + (item + 1) * 0.02 - time.monotonic()))
        assert time.monotonic() - began < 1.5
        assert await queue.get_value("reindex:42", timeout=30) == 49
    runs = _starts(tmp_path, "burst")
    assert [run["item"] for run in runs] == [49]
    assert runs[0]["start"] >= last_call + 0.5
    result = await queue.get_result("reindex:42")
    assert result is not None and result.attempts == 1
    counts = {s.queue: s for s in await queue.stats()}
    assert counts["default"].pending == counts["default"].scheduled == 0


async def test_each_call_moves_the_eta_and_replaces_the_call(queue: TaskQueue) -> None:
    debounced = queue.options(task_id="doc:7", debounce=600)
    before = time.time()
    await debounced.enqueue(tasks.add, 1, 1)
    first = await queue.get_task("doc:7")
    assert first is not None and first.eta is not None and first.enqueued_at is not None
    assert first.eta.timestamp() >= before + 600
    await debounced.options(priority=7, debounce=900).enqueue(tasks.async_add, 2, 2)
    second = await queue.get_task("doc:7")
    assert second is not None and second.eta is not None
    assert second.status is TaskStatus.PENDING
    assert second.eta.timestamp() >= before + 900
    assert second.priority == 7 and second.function.endswith("async_add")
    assert second.enqueued_at == first.enqueued_at
    page = await queue.list_tasks(status="pending")
    assert [info.task_id for info in page.tasks] == ["doc:7"]


async def test_a_call_while_the_task_runs_is_dropped_and_one_after_it_runs_again(
    queue: TaskQueue, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    debounced = queue.options(task_id="feed:1", debounce=0.05)
    async with AsyncWorker(queue.backend, poll_interval=0.1):
        await debounced.enqueue(
            tasks.record_start_then_wait, str(tmp_path), "feed", 1, str(release)
        )
        await wait_until(lambda: len(_starts(tmp_path, "feed")) == 1, message="the first run")
        # While it runs: stored nothing, returns the id, the run goes on with its own call.
        assert await debounced.enqueue(tasks.record_start, str(tmp_path), "feed", 2) == "feed:1"
        assert await queue.get_status("feed:1") is TaskStatus.RUNNING
        release.touch()
        assert await queue.get_value("feed:1", timeout=30) == 1
        assert [run["item"] for run in _starts(tmp_path, "feed")] == [1]
        # Finished, its result kept: the next call starts a new run with its own arguments.
        assert await debounced.enqueue(tasks.record_start, str(tmp_path), "feed", 3) == "feed:1"
        await wait_until(lambda: len(_starts(tmp_path, "feed")) == 2, message="the second run")
        assert await queue.get_value("feed:1", timeout=30) == 3
    result = await queue.get_result("feed:1")
    assert result is not None and result.attempts == 1
    assert [run["item"] for run in _starts(tmp_path, "feed")] == [1, 3]


async def test_a_failed_or_cancelled_id_runs_again_when_debounced(queue: TaskQueue) -> None:
    debounced = queue.options(task_id="mail:9", debounce=0.05)
    await debounced.options(debounce=600).enqueue(tasks.add, 1, 1)
    assert await queue.cancel("mail:9") is True
    await debounced.enqueue(tasks.add, 20, 22)
    assert await queue.get_status("mail:9") is TaskStatus.PENDING
    async with AsyncWorker(queue.backend, poll_interval=0.1):
        assert await queue.get_value("mail:9", timeout=30) == 42


async def test_a_debounced_id_stays_on_its_queue(queue: TaskQueue) -> None:
    await queue.options(task_id="q:1", debounce=600).enqueue(tasks.add, 1, 1)
    with pytest.raises(ConfigurationError, match="another queue"):
        await queue.options(task_id="q:1", debounce=600, queue="other").enqueue(tasks.add, 2, 2)
    info = await queue.get_task("q:1")
    assert info is not None and info.queue == "default"


def _new(task_id: str, payload: bytes, eta: float, queue: str = "default") -> NewTask:
    now = time.time()
    return NewTask(
        id=task_id,
        queue=queue,
        payload=payload,
        options=TaskOptions().engine_options(),
        priority=0,
        eta=eta,
        enqueued_at=now,
        result_ttl=3600.0,
        function="tests.conformance.tasks:add",
    )


async def test_the_storage_step_reports_what_it_found_and_fences_older_lives(
    queue: TaskQueue,
) -> None:
    backend = queue.backend
    await queue.connect()
    now = time.time()
    assert await backend.enqueue_replacing(_new("s:1", b"v0", now + 600)) is ReplaceOutcome.STORED
    replaced = await backend.enqueue_replacing(_new("s:1", b"v1", now))
    assert replaced is ReplaceOutcome.REPLACED_PENDING
    claims: list[Claim] = []

    async def claimed() -> bool:
        claims.extend(await backend.claim(["default"], 10, "w", 30.0))
        return bool(claims)

    await wait_until(claimed, message="a claim of the replaced task")
    (claim,) = claims
    assert claim.payload == b"v1"
    running = await backend.enqueue_replacing(_new("s:1", b"v2", time.time()))
    assert running is ReplaceOutcome.RUNNING
    other = await backend.enqueue_replacing(_new("s:1", b"v2", time.time(), queue="other"))
    assert other is ReplaceOutcome.OTHER_QUEUE
    done = time.time()
    finish = Finish(claim.ref, TaskStatus.SUCCESS, b"r", None, None, done, done + 3600)
    assert await backend.settle([finish]) == [True]
    again = await backend.enqueue_replacing(_new("s:1", b"v3", time.time()))
    assert again is ReplaceOutcome.REPLACED_FINISHED
    snap = await backend.get_task("s:1")
    assert snap is not None and snap.status is TaskStatus.PENDING and snap.attempts == 0
    claims.clear()
    await wait_until(claimed, message="a claim of the new life")
    (second,) = claims
    assert second.payload == b"v3" and second.attempts == 1
    assert second.fencing_token != claim.fencing_token
    # The first life's claim can touch nothing of the second.
    stale = Finish(claim.ref, TaskStatus.FAILED, None, "late", None, done, done + 3600)
    assert await backend.settle([stale]) == [False]
    assert await backend.extend_lease([claim.ref], 30.0) == [LeaseState.LOST]
    assert await backend.extend_lease([second.ref], 30.0) == [LeaseState.HELD]
    assert await backend.settle([replace(finish, claim=second.ref)]) == [True]


async def test_a_claim_racing_a_replace_runs_one_call_once(queue: TaskQueue) -> None:
    """Whichever step wins, the claim hands out the call the replace's outcome says: the old
    one when the replace found the task running, the new one when it replaced it."""
    backend = queue.backend
    await queue.connect()
    for round_ in range(12):
        task_id = f"race:{round_}"
        assert await backend.enqueue([_new(task_id, b"old", time.time())]) == [True]
        outcome, claims = await asyncio.gather(
            backend.enqueue_replacing(_new(task_id, b"new", time.time())), _claim(backend)
        )
        assert len(claims) == 1, claims
        expected = b"old" if outcome is ReplaceOutcome.RUNNING else b"new"
        assert outcome in (ReplaceOutcome.RUNNING, ReplaceOutcome.REPLACED_PENDING)
        assert claims[0].payload == expected
        assert await backend.claim(["default"], 10, "w", 30.0) == []
        done = time.time()
        finish = Finish(claims[0].ref, TaskStatus.SUCCESS, b"r", None, None, done, done + 60)
        assert await backend.settle([finish]) == [True]


async def _claim(backend: Backend) -> list[Claim]:
    """The claims of the first claim that hands out anything (within 15 s)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = await backend.claim(["default"], 10, "w", 30.0)
        if got:
            return got
        await asyncio.sleep(0.01)
    return []


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "5", True, [1]])
async def test_debounce_must_be_a_finite_number_of_seconds(queue: TaskQueue, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="debounce must be a finite number"):
        queue.options(task_id="x", debounce=bad)


async def test_debounce_is_refused_where_it_cannot_apply(queue: TaskQueue) -> None:
    with pytest.raises(ConfigurationError, match="needs an explicit task_id"):
        await queue.options(debounce=1).enqueue(tasks.add, 1, 1)
    view = queue.options(task_id="x", debounce=1)
    with pytest.raises(ConfigurationError, match="use enqueue, not enqueue_at or enqueue_in"):
        await view.enqueue_in(5, tasks.add, 1, 1)
    with pytest.raises(ConfigurationError, match="use enqueue, not enqueue_at or enqueue_in"):
        await view.enqueue_at(datetime.now(UTC), tasks.add, 1, 1)
    with pytest.raises(ConfigurationError, match="add_cron cannot take debounce"):
        await queue.options(debounce=1).add_cron("c", "* * * * *", tasks.add, (1, 1))
    with pytest.raises(ConfigurationError, match="the latest ETA a task can have"):
        await queue.options(task_id="x", debounce=1e300).enqueue(tasks.add, 1, 1)
    with pytest.raises(ConfigurationError, match="cannot enqueue"):
        await view.enqueue(tasks.add, 1)  # arguments are checked before anything is stored
    assert await queue.get_status("x") is None
