"""The operator's command line (docs/operating.md) against a real SQLite store: tasks,
show, workers, requeue, cancel, purge, --version, exit codes, and what ``--json`` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sitq import AsyncWorker, TaskQueue, TaskStatus, __version__
from sitq.models import TaskInfo, WorkerInfo
from tests.conformance import tasks
from tests.conftest import REPO, WorkerProcesses, wait_until

TASK_FIELDS = {f.name for f in fields(TaskInfo)}
WORKER_FIELDS = {f.name for f in fields(WorkerInfo)}


def sitq(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sitq", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
async def store(tmp_path: Path) -> dict[str, str]:
    """A SQLite store with a succeeded, a failed, a pending and a cancelled task on ``q``."""
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    async with TaskQueue(url) as queue:
        q = queue.options(queue="q")
        made = {
            "url": url,
            "success": await q.enqueue(tasks.add, 1, 2),
            "failed": await q.enqueue(tasks.fail, "broken on purpose"),
        }
        async with AsyncWorker(queue.backend, queues=["q"], poll_interval=0.1):
            await queue.get_result(made["success"], timeout=30)
            await queue.get_result(made["failed"], timeout=30)
        later = datetime.now(UTC) + timedelta(hours=1)
        made["pending"] = await q.enqueue_at(later, tasks.add, 3, 4)
        made["cancelled"] = await q.enqueue_at(later, tasks.add, 5, 6)
        assert await queue.cancel(made["cancelled"])
    return made


def test_version(tmp_path: Path) -> None:
    done = sitq("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"sitq {__version__}"


@pytest.mark.parametrize(
    "command",
    [
        ["info"],
        ["tasks"],
        ["show", "some-id"],
        ["workers"],
        ["requeue", "some-id"],
        ["cancel", "some-id"],
        ["purge", "-q", "q", "--yes"],
        ["web", "--port", "0"],
    ],
)
def test_only_worker_creates_a_store(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "typo.db"
    done = sitq(command[0], f"sqlite:///{missing}", *command[1:], cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"no sitq database at {missing}" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not missing.exists()


def test_tasks_lists_as_table_and_json(store: dict[str, str], tmp_path: Path) -> None:
    url = store["url"]
    done = sitq("tasks", url, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert [t["status"] for t in listed] == ["pending", "failed", "cancelled", "success"]
    assert all(set(t) == TASK_FIELDS for t in listed)
    assert listed[1]["error"] == "ValueError: broken on purpose"
    assert listed[1]["function"] == "tests.conformance.tasks.fail"

    failed = sitq("tasks", url, "--status", "failed", "-q", "q", "--json", cwd=tmp_path)
    assert [t["task_id"] for t in json.loads(failed.stdout)] == [store["failed"]]
    several = sitq(
        "tasks", url, "--status", "success", "--status", "pending", "--json", cwd=tmp_path
    )
    assert [t["status"] for t in json.loads(several.stdout)] == ["pending", "success"]
    limited = sitq("tasks", url, "--limit", "1", cwd=tmp_path)
    assert limited.returncode == 0 and "raise --limit" in limited.stderr
    table = sitq("tasks", url, cwd=tmp_path).stdout.splitlines()
    assert table[0].split()[:4] == ["task", "status", "queue", "function"]
    assert any(store["failed"] in line and "broken on purpose" in line for line in table)
    other = sitq("tasks", url, "-q", "nothing-here", cwd=tmp_path)
    assert other.returncode == 0 and "(no tasks)" in other.stdout
    bad = sitq("tasks", url, "--status", "done", cwd=tmp_path)
    assert bad.returncode == 2


def test_show_a_task(store: dict[str, str], tmp_path: Path) -> None:
    url = store["url"]
    shown = sitq("show", url, store["failed"], "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert set(record) == TASK_FIELDS and record["status"] == "failed"
    assert "Traceback" in record["traceback"]
    text = sitq("show", url, store["failed"], cwd=tmp_path).stdout
    assert "ValueError: broken on purpose" in text and "Traceback (most recent call last)" in text
    unknown = sitq("show", url, "no-such-task", cwd=tmp_path)
    assert unknown.returncode == 1 and "no task 'no-such-task'" in unknown.stderr


async def test_requeue_cancel_and_purge(store: dict[str, str], tmp_path: Path) -> None:
    url = store["url"]
    refused = sitq("requeue", url, store["success"], cwd=tmp_path)
    assert refused.returncode == 1 and "is success" in refused.stderr
    assert sitq("requeue", url, "no-such-task", cwd=tmp_path).returncode == 1
    done = sitq("requeue", url, store["failed"], store["cancelled"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("requeued") == 2
    async with TaskQueue(url) as queue:
        assert await queue.get_status(store["failed"]) is TaskStatus.PENDING
    assert sitq("requeue", url, cwd=tmp_path).returncode == 2
    none_failed = sitq("requeue", url, "--failed", "-q", "q", cwd=tmp_path)
    assert none_failed.returncode == 0 and "requeued 0 failed tasks" in none_failed.stdout

    cancelled = sitq("cancel", url, store["pending"], cwd=tmp_path)
    assert cancelled.returncode == 0 and f"cancelled {store['pending']}" in cancelled.stdout
    again = sitq("cancel", url, store["pending"], cwd=tmp_path)
    assert again.returncode == 1 and "already finished" in again.stderr

    unconfirmed = sitq("purge", url, "-q", "q", "--status", "finished", cwd=tmp_path)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    purged = sitq("purge", url, "-q", "q", "--status", "finished", "--yes", cwd=tmp_path)
    assert purged.returncode == 0 and "removed 2 finished tasks from q" in purged.stdout
    rest = json.loads(sitq("tasks", url, "--json", cwd=tmp_path).stdout)
    assert sorted(t["task_id"] for t in rest) == sorted([store["failed"], store["cancelled"]])
    running = sitq("purge", url, "-q", "q", "--status", "running", "--yes", cwd=tmp_path)
    assert running.returncode == 2


async def test_workers_lists_a_live_worker(
    tmp_path: Path, worker_processes: WorkerProcesses
) -> None:
    url = f"sqlite:///{tmp_path / 'w.db'}"
    proc = worker_processes.start(url, kind="thread", concurrency=2, queues=("a", "b"))

    def listed() -> bool:
        done = sitq("workers", url, "--json", cwd=tmp_path)
        return done.returncode == 0 and any(w["pid"] == proc.pid for w in json.loads(done.stdout))

    await wait_until(listed, timeout=30, message="the worker listed")
    found = json.loads(sitq("workers", url, "--json", cwd=tmp_path).stdout)
    (mine,) = [w for w in found if w["pid"] == proc.pid]
    assert set(mine) == WORKER_FIELDS
    assert (mine["kind"], mine["queues"], mine["concurrency"]) == ("thread", ["a", "b"], 2)
    table = sitq("workers", url, cwd=tmp_path).stdout
    assert mine["worker_id"] in table
    info = sitq("info", url, cwd=tmp_path).stdout
    assert "workers: 1" in info and mine["worker_id"] in info
    assert worker_processes.stop(proc) == 0
    assert json.loads(sitq("workers", url, "--json", cwd=tmp_path).stdout) == []


async def test_the_command_line_never_unpickles(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    marker = tmp_path / "ran"
    async with TaskQueue(url) as queue:
        hostile = tasks.RunsCodeWhenUnpickled(str(marker))
        task_id = await queue.enqueue_in(3600, tasks.add, hostile, 1)
        assert await queue.cancel(task_id)
    for command in (
        ["tasks"],
        ["tasks", "--json"],
        ["show", task_id],
        ["show", task_id, "--json"],
        ["requeue", task_id],
        ["info"],
    ):
        done = sitq(command[0], url, *command[1:], cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
    assert not marker.exists()


@pytest.mark.parametrize("level", ["verbose", "loud", "5"])
def test_a_bad_log_level_is_one_line(tmp_path: Path, level: str) -> None:
    done = sitq("worker", f"sqlite:///{tmp_path / 'x.db'}", "--log-level", level, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"sitq: --log-level {level!r} is not a logging level: use one of DEBUG, INFO, "
        "WARNING, ERROR, CRITICAL (any case)"
    ]
    assert not (tmp_path / "x.db").exists()
