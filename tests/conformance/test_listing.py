"""docs/operating.md, Inspecting tasks: get_task and list_tasks on every backend."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitq import AsyncWorker, ConfigurationError, TaskQueue, TaskStatus
from sitq.models import TaskInfo
from tests.conformance import tasks
from tests.conftest import wait_until

GROUPS = ["running", "pending", "failed", "cancelled", "success"]


async def _all(tq: TaskQueue, /, **kwargs: object) -> list[TaskInfo]:
    """Every task of a listing, following the cursors."""
    found: list[TaskInfo] = []
    cursor = None
    for _ in range(10_000):
        page = await tq.list_tasks(cursor=cursor, **kwargs)  # type: ignore[arg-type]
        found.extend(page.tasks)
        cursor = page.next_cursor
        if cursor is None:
            return found
    raise AssertionError("the cursors never ended")


def _check_order(infos: list[TaskInfo]) -> None:
    """The ordering rules within each status group, and the order of the groups."""
    groups = [GROUPS.index(i.status.value) for i in infos]
    assert groups == sorted(groups), [i.status.value for i in infos]
    for a, b in itertools.pairwise(infos):
        if a.status is not b.status:
            continue
        if a.status is TaskStatus.PENDING:
            assert a.eta is not None and b.eta is not None
            assert (-a.priority, a.eta) <= (-b.priority, b.eta), (a, b)
        elif a.status is TaskStatus.RUNNING:
            assert a.started_at is not None and b.started_at is not None
            assert a.started_at <= b.started_at
        else:
            assert a.finished_at is not None and b.finished_at is not None
            assert a.finished_at >= b.finished_at


async def _store_every_state(queue: TaskQueue, tmp_path: Path) -> dict[str, list[str]]:
    """Tasks in every state on the queues ``a`` and ``b``: what is where."""
    release = str(tmp_path / "release")
    made: dict[str, list[str]] = {status: [] for status in GROUPS}
    for name in ("a", "b"):
        q = queue.options(queue=name)
        for _ in range(2):
            made["success"].append(await q.enqueue(tasks.add, 1, 1))
            made["failed"].append(await q.enqueue(tasks.fail, "listed"))
        for _ in range(2):
            made["running"].append(await q.enqueue(tasks.wait_for_file, release))
    async with AsyncWorker(queue.backend, concurrency=4, queues=["a", "b"], poll_interval=0.1):
        await wait_until(
            lambda: _count(queue, "running", 4),
            message="four running tasks",
        )
        await wait_until(
            lambda: _count(queue, ["success", "failed"], 8), message="eight finished tasks"
        )
        # Pending (and scheduled) tasks come after the worker took what it could run.
        later = datetime.now(UTC) + timedelta(hours=1)
        for name in ("a", "b"):
            q = queue.options(queue=name)
            made["pending"].append(await q.options(priority=5).enqueue(tasks.add, 2, 2))
            made["pending"].append(await q.enqueue(tasks.add, 3, 3))
            made["pending"].append(await q.enqueue_at(later, tasks.add, 4, 4))
            made["pending"].append(await q.options(priority=9).enqueue_at(later, tasks.add, 5, 5))
            cancelled = await q.enqueue_at(later, tasks.add, 6, 6)
            assert await queue.cancel(cancelled)
            made["cancelled"].append(cancelled)
        await _listing_checks(queue, made)
        Path(release).touch()
        for task_id in made["running"]:
            assert await queue.get_value(task_id, timeout=30) == "released"
    return made


async def _count(queue: TaskQueue, status: str | list[str], n: int) -> bool:
    return len(await _all(queue, status=status)) >= n


async def _listing_checks(queue: TaskQueue, made: dict[str, list[str]]) -> None:
    everything = await _all(queue)
    assert sorted(i.task_id for i in everything) == sorted(t for ids in made.values() for t in ids)
    _check_order(everything)
    for status in GROUPS:
        listed = await _all(queue, status=status)
        assert sorted(i.task_id for i in listed) == sorted(made[status]), status
        assert {i.status.value for i in listed} <= {status}
        for name in ("a", "b"):
            both = await _all(queue, status=status, queue=name)
            assert {i.queue for i in both} <= {name}
            assert sorted(i.task_id for i in both) == sorted(
                i.task_id for i in listed if i.queue == name
            )
    only_a = await _all(queue, queue="a")
    assert {i.queue for i in only_a} == {"a"} and len(only_a) == len(everything) // 2
    _check_order(only_a)
    several = await _all(queue, status=["success", "running"], limit=3)
    assert [i.status.value for i in several] == ["running"] * 4 + ["success"] * 4
    running = await _all(queue, status="running")
    assert all(i.worker_id and i.started_at for i in running)
    failed = (await queue.list_tasks(status="failed", limit=1)).tasks[0]
    assert failed.error == "ValueError: listed" and "ValueError" in (failed.traceback or "")
    assert failed.function == "tests.conformance.tasks.fail" and failed.attempts == 1
    pending = await _all(queue, status="pending", queue="a")
    assert [i.priority for i in pending] == [9, 5, 0, 0]
    assert pending[2].eta is not None and pending[3].eta is not None
    assert pending[2].eta < pending[3].eta  # due now, then in an hour


async def test_list_by_status_queue_both_and_neither(queue: TaskQueue, tmp_path: Path) -> None:
    made = await _store_every_state(queue, tmp_path)
    info = await queue.get_task(made["failed"][0])
    assert info is not None and info.status is TaskStatus.FAILED
    assert info.to_dict()["status"] == "failed"
    assert await queue.get_task("no-such-task") is None


async def test_list_checks_its_arguments(queue: TaskQueue) -> None:
    for bad in (
        {"status": "done"},
        {"status": []},
        {"limit": 0},
        {"limit": 1001},
        {"limit": True},
        {"queue": ""},
        {"cursor": "garbage!"},
        {"cursor": 5},
    ):
        with pytest.raises(ConfigurationError):
            await queue.list_tasks(**bad)  # type: ignore[arg-type]
    for n in range(3):
        await queue.enqueue(tasks.add, n, n)
    page = await queue.list_tasks(status="pending", limit=2)
    assert page.next_cursor is not None
    with pytest.raises(ConfigurationError, match="other statuses"):
        await queue.list_tasks(status="failed", cursor=page.next_cursor)
    rest = await queue.list_tasks(status="pending", limit=2, cursor=page.next_cursor)
    assert len(rest.tasks) == 1 and rest.next_cursor is None
    assert (await queue.list_tasks(status="failed")).tasks == []


async def test_paging_while_tasks_come_and_go(queue: TaskQueue) -> None:
    """2,500 tasks stay pending on one queue while others are enqueued and finished on another:
    following the cursors lists each of the 2,500 exactly once."""
    steady = queue.options(queue="steady")
    ids = await steady.enqueue_many([(tasks.add, (i, i)) for i in range(2500)])
    stop = asyncio.Event()

    async def churn() -> None:
        busy = queue.options(queue="busy")
        while not stop.is_set():
            await busy.enqueue_many([(tasks.add, (1, 2))] * 20)
            await asyncio.sleep(0)

    async with AsyncWorker(queue.backend, concurrency=8, queues=["busy"], poll_interval=0.05):
        churning = asyncio.create_task(churn())
        try:
            seen: list[str] = []
            cursor = None
            while True:
                page = await queue.list_tasks(status="pending", limit=97, cursor=cursor)
                seen.extend(i.task_id for i in page.tasks if i.queue == "steady")
                cursor = page.next_cursor
                if cursor is None:
                    break
            everything: list[str] = []
            cursor = None
            while True:
                page = await queue.list_tasks(limit=113, cursor=cursor)
                everything.extend(i.task_id for i in page.tasks if i.queue == "steady")
                cursor = page.next_cursor
                if cursor is None:
                    break
        finally:
            stop.set()
            await churning
    assert len(seen) == len(set(seen)) == 2500 and set(seen) == set(ids)
    assert len(everything) == len(set(everything)) == 2500


async def test_function_names(queue: TaskQueue) -> None:
    import functools

    import __main__

    def local() -> None: ...

    local.__module__ = "__main__"
    __main__.local_for_names = local  # type: ignore[attr-defined]
    cases = {
        "tests.conformance.tasks.add": (tasks.add, (1, 2)),
        "tests.conformance.test_listing.test_function_names.<locals>.<lambda>": (
            lambda: None,
            (),
        ),
        "tests.conformance.tasks.Greeter.greet": (tasks.Greeter("hi").greet, ("x",)),
        "tests.conformance.tasks.add#partial": (functools.partial(tasks.add, 1), (2,)),
        "__main__.test_function_names.<locals>.local": (local, ()),
    }
    for expected, (func, args) in cases.items():
        task_id = await queue.enqueue(func, *args)
        info = await queue.get_task(task_id)
        assert info is not None and info.function == expected.removesuffix("#partial")


async def test_inspection_never_unpickles(queue: TaskQueue, tmp_path: Path) -> None:
    """A stored call that would run code when unpickled is listed, shown and requeued:
    nothing runs."""
    marker = tmp_path / "ran"
    later = datetime.now(UTC) + timedelta(hours=1)
    hostile = tasks.RunsCodeWhenUnpickled(str(marker))
    pending = await queue.enqueue_at(later, tasks.add, hostile, 1)
    cancelled = await queue.enqueue_at(later, tasks.add, hostile, 2)
    assert await queue.cancel(cancelled)
    assert not marker.exists()
    listed = await _all(queue)
    assert {i.task_id for i in listed} == {pending, cancelled}
    for task_id in (pending, cancelled):
        info = await queue.get_task(task_id)
        assert info is not None and info.function == "tests.conformance.tasks.add"
    assert await queue.requeue(cancelled) is True
    assert await queue.requeue(pending) is False
    assert await queue.requeue_many("cancelled") == 0
    assert await queue.purge("default", "pending") == 2
    assert not marker.exists()
