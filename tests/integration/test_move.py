"""``sitq move`` as a real process between real stores: every field of the moved tasks and
schedules intact, the moved tasks run by a worker of the destination, a move killed part way
and run again loses and doubles nothing, and running tasks stay where they are."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from sitq import FixedBackoff, RetryPolicy, TaskQueue, TaskStatus
from sitq.models import Reschedule, TaskInfo
from tests.conformance import tasks
from tests.conftest import CLUSTER_FACTORIES, FACTORIES, REPO, WorkerProcesses, wait_until

# The stores a SQLite store moves to and back from; the Redis Cluster case runs only when
# ``-m`` names the ``cluster`` marker (tests/conftest.py), on the session's cluster.
DESTINATIONS = [
    "postgres",
    "redis",
    "nats",
    pytest.param("redis-cluster", marks=pytest.mark.cluster),
]
# (source, destination) of the move killed part way, and of the move with running tasks.
KILLED_PAIRS = [("sqlite", "postgres"), ("redis", "nats")]
RUNNING_PAIRS = [("sqlite", "sqlite"), ("nats", "redis")]


def _sitq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", "sitq", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _counts(stdout: str) -> dict[str, int]:
    """The counts a move printed, by the start of their line."""
    counts = {}
    for line in stdout.splitlines()[1:]:
        label, _, value = line.rpartition(": ")
        counts[label] = int(value.split()[0])
    return counts


def _store_url(
    name: str, tmp_path: Path, request: pytest.FixtureRequest, label: str = "store"
) -> str:
    """A new empty store of backend ``name`` (a SQLite one in the file ``<label>.db``)."""
    if name == "sqlite":
        return f"sqlite:///{tmp_path / label}.db"
    url = {**FACTORIES, **CLUSTER_FACTORIES}[name](tmp_path, request).url
    assert url is not None
    return url


async def _pending(url: str) -> dict[str, TaskInfo]:
    """The pending tasks, by id, as listed. The start of an earlier attempt is not part of a
    task's record that a move keeps (a pending task has none of its own)."""
    async with TaskQueue(url) as queue:
        found: dict[str, TaskInfo] = {}
        cursor = None
        while True:
            page = await queue.list_tasks(status="pending", limit=1000, cursor=cursor)
            found.update((t.task_id, replace(t, started_at=None)) for t in page.tasks)
            cursor = page.next_cursor
            if cursor is None:
                return found


async def _crons(url: str) -> list[tuple[object, ...]]:
    async with TaskQueue(url) as queue:
        return [
            (c.name, c.expression, c.timezone, c.misfire, c.func, c.queue, c.last_tick)
            for c in await queue.list_crons()
        ]


@pytest.fixture(params=DESTINATIONS)
def middle(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new empty store of each destination (made outside the test's event loop: the Redis
    Cluster of the session starts on first use)."""
    return _store_url(request.param, tmp_path, request)


async def test_move_there_and_back_keeps_every_field_and_the_tasks_run(
    middle: str, tmp_path: Path, worker_processes: WorkerProcesses
) -> None:
    log = str(tmp_path)
    first = f"sqlite:///{tmp_path / 'first.db'}"
    last = f"sqlite:///{tmp_path / 'last.db'}"
    retry = RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.01))
    async with TaskQueue(first) as queue:
        flaky = await queue.options(priority=5, retry=retry, timeout=30, result_ttl=600).enqueue(
            tasks.flaky, log, "flaky", 1
        )
        keyed = await queue.options(
            concurrency_key="k", concurrency_limit=1, task_id="keyed-1"
        ).enqueue(tasks.record, log, "keyed")
        later = await queue.options(priority=-3).enqueue_in(3600, tasks.add, 2, 3)
        other_queue = await queue.options(queue="other").enqueue(tasks.record, log, "other")
        retried = await queue.options(queue="rq").enqueue(tasks.record, log, "retried")
        await queue.add_cron("nightly", "0 3 * * *", tasks.add, args=(1, 2), queue="other")
        # An attempt that ended in a retry: the task is pending with attempts and its error.
        [claim] = await queue.backend.claim(["rq"], 1, "w", 30)
        await queue.backend.settle([Reschedule(claim.ref, claim.started_at, "OSError: x", "tb")])
    before = await _pending(first)
    assert set(before) == {flaky, keyed, later, other_queue, retried}
    assert before[retried].attempts == 1 and before[retried].error == "OSError: x"
    crons = await _crons(first)

    there = _sitq("move", first, middle, cwd=tmp_path)
    assert there.returncode == 0, there.stderr
    assert _counts(there.stdout) == {
        "moved": 5,
        "already in destination": 0,
        "running, left in source": 0,
        "cron schedules moved": 1,
    }
    assert await _pending(middle) == before
    assert await _crons(middle) == crons
    assert await _pending(first) == {} and await _crons(first) == []

    back = _sitq("move", middle, last, cwd=tmp_path)
    assert back.returncode == 0, back.stderr
    assert _counts(back.stdout)["moved"] == 5
    assert await _pending(last) == before
    assert await _crons(last) == crons
    assert await _pending(middle) == {} and await _crons(middle) == []

    # A worker of the last store runs them with their arguments, options and retry policy.
    worker = worker_processes.start(last, queues=("default", "other", "rq"))
    async with TaskQueue(last) as queue:
        for task_id in (flaky, keyed, other_queue, retried):
            await wait_until(
                lambda t=task_id: _finished(queue, t), timeout=20, message=f"{task_id} done"
            )
        flaky_result = await queue.get_result(flaky)
        assert flaky_result.status is TaskStatus.SUCCESS and flaky_result.attempts == 2
        assert await queue.get_value(flaky) == 2  # failed once, retried, succeeded
        assert (await queue.get_result(retried)).attempts == 2
        assert await queue.get_status(later) is TaskStatus.PENDING
    assert worker_processes.stop(worker) == 0
    for label in ("keyed", "other", "retried"):
        assert len(tasks.executions(log, label)) == 1


async def _finished(queue: TaskQueue, task_id: str) -> bool:
    return (await queue.get_status(task_id)).is_final


@pytest.mark.parametrize(("origin", "target"), KILLED_PAIRS)
async def test_a_move_killed_part_way_and_run_again_loses_and_doubles_nothing(
    origin: str,
    target: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    worker_processes: WorkerProcesses,
) -> None:
    source = _store_url(origin, tmp_path, request, "src")
    destination = _store_url(target, tmp_path, request, "dst")
    n = 600
    async with TaskQueue(source) as queue:
        ids = set(
            await queue.enqueue_many(
                [(tasks.record_item, (str(tmp_path), "run", i)) for i in range(n)]
            )
        )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    mover = subprocess.Popen(
        [sys.executable, "-m", "sitq", "move", source, destination, "--batch", "5"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        async with TaskQueue(destination) as dst, TaskQueue(source) as src:

            async def some_moved() -> bool:
                return sum(s.pending for s in await dst.stats()) >= 50

            await wait_until(some_moved, timeout=30, message="some tasks moved")
            mover.send_signal(signal.SIGKILL)
            mover.wait(10)
            moved_before = len(await _pending(destination))
            assert 50 <= moved_before < n, "the move must be killed part way"
            left = sum(s.pending + s.running for s in await src.stats())
            assert moved_before + left >= n
    finally:
        if mover.poll() is None:
            os.killpg(mover.pid, signal.SIGKILL)
            mover.wait()

    again = _sitq("move", source, destination, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    counts = _counts(again.stdout)
    assert counts["moved"] + moved_before >= n
    assert counts["moved"] + counts["already in destination"] + moved_before <= n + 5
    assert set(await _pending(destination)) == ids
    async with TaskQueue(source) as src:
        assert await src.stats() == []

    worker = worker_processes.start(destination, concurrency=20)
    await wait_until(lambda: _lines(tmp_path / "run.log") >= n, timeout=30, message="all ran")
    async with TaskQueue(destination) as dst:
        await wait_until(lambda: _all_succeeded(dst, n), timeout=10, message="every result stored")
    assert worker_processes.stop(worker) == 0
    lines = (tmp_path / "run.log").read_text().splitlines()
    runs = sorted(int(line.split()[0]) for line in lines)
    assert runs == list(range(n))  # every task ran, and exactly once


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def _all_succeeded(queue: TaskQueue, n: int) -> bool:
    return sum(s.succeeded for s in await queue.stats()) == n


@pytest.mark.parametrize(("origin", "target"), RUNNING_PAIRS)
async def test_running_tasks_stay_and_are_counted_and_a_dry_run_changes_nothing(
    origin: str,
    target: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    worker_processes: WorkerProcesses,
) -> None:
    source = _store_url(origin, tmp_path, request, "src")
    destination = _store_url(target, tmp_path, request, "dst")
    release = tmp_path / "release"
    async with TaskQueue(source) as queue:
        busy = await queue.options(queue="busy").enqueue(tasks.wait_for_file, str(release))
        waiting = [await queue.enqueue(tasks.add, i, i) for i in range(3)]
        worker = worker_processes.start(source, queues=("busy",))
        await wait_until(
            lambda: _is(queue, busy, TaskStatus.RUNNING), timeout=20, message="running"
        )
        dry = _sitq("move", source, destination, "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith("dry run: ")
        assert _counts(dry.stdout) == {
            "would move": 3,
            "already in destination": 0,
            "running, left in source": 1,
            "cron schedules would move": 0,
        }
        assert set(await _pending(source)) == set(waiting)

        done = _sitq("move", source, destination, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert _counts(done.stdout)["running, left in source"] == 1
        assert _counts(done.stdout)["moved"] == 3
        info = await queue.get_task(busy)
        assert info is not None
        assert info.status is TaskStatus.RUNNING and info.worker_id not in (None, "sitq-move")
        assert set(await _pending(destination)) == set(waiting)
        release.touch()
        await wait_until(lambda: _is(queue, busy, TaskStatus.SUCCESS), message="finished")
    assert worker_processes.stop(worker) == 0
    async with TaskQueue(destination) as dst:
        assert await dst.get_task(busy) is None


async def _is(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) is status
