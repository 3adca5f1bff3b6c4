"""``sitq worker`` and ``sitq info`` as real processes (the operator's commands are in
test_cli_operating.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sitq import TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conftest import REPO, WorkerProcesses, wait_until


def _sitq(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "sitq", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_info_prints_counts_per_queue(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with TaskQueue(url) as queue:
        await queue.enqueue(tasks.add, 1, 1)
        await queue.enqueue_in(3600, tasks.add, 1, 1)
        await queue.options(queue="emails").enqueue(tasks.add, 1, 1)
    done = _sitq("info", url, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split() == [
        "queue",
        "pending",
        "scheduled",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    table = lines[2 : lines.index("")]
    rows = {line.split()[0]: line.split()[1:] for line in table}
    assert rows["default"] == ["1", "1", "0", "0", "0", "0"]
    assert rows["emails"] == ["1", "0", "0", "0", "0", "0"]
    via_env = _sitq("info", cwd=tmp_path, env={"SITQ_URL": url})
    assert via_env.stdout == done.stdout


def test_bad_url_is_a_clear_error(tmp_path: Path) -> None:
    done = _sitq("info", "mysql://localhost/db", cwd=tmp_path)
    assert done.returncode == 2
    assert "unknown backend scheme 'mysql'" in done.stderr
    done = _sitq("worker", "sqlite:///x.db", "--import", "no_such_module_abc", cwd=tmp_path)
    assert done.returncode != 0
    assert "no_such_module_abc" in done.stderr


async def test_sigterm_stops_gracefully_and_releases_unfinished_work(
    tmp_path: Path, worker_processes: WorkerProcesses
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with TaskQueue(url) as queue:
        long_task = await queue.enqueue(tasks.sleep_async, 3600)
        proc = worker_processes.start(url, extra=("--shutdown-timeout", "0.5"))
        await wait_until(lambda: _is(queue, long_task, TaskStatus.RUNNING), message="running")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert await queue.get_status(long_task) == TaskStatus.PENDING
        snap = await queue.backend.get_task(long_task)
        assert snap is not None and snap.attempts == 0


async def test_worker_options_from_environment(
    tmp_path: Path, worker_processes: WorkerProcesses
) -> None:
    url = f"sqlite:///{tmp_path / 'q.db'}"
    async with TaskQueue(url) as queue:
        task_id = await queue.options(queue="reports").enqueue(tasks.add, 20, 1)
        env = dict(
            os.environ,
            SITQ_URL=url,
            SITQ_QUEUES="emails,reports",
            SITQ_KIND="thread",
            SITQ_IMPORTS="tests.conformance.tasks",
            PYTHONPATH=str(REPO),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "sitq", "worker"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        worker_processes.procs.append(proc)  # killed at teardown if still running
        assert await queue.get_value(task_id, timeout=30) == 21
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "sitq thread worker" in err and "queues emails, reports" in err


async def _is(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status


async def test_worker_secret_from_environment(
    tmp_path: Path, worker_processes: WorkerProcesses
) -> None:
    from sitq import PickleSerializer

    url = f"sqlite:///{tmp_path / 'q.db'}"
    secret = "s" * 32
    async with TaskQueue(url, PickleSerializer(secret=secret)) as signed, TaskQueue(url) as plain:
        good = await signed.enqueue(tasks.add, 1, 2)
        unsigned = await plain.enqueue(tasks.add, 3, 4)
        env = dict(os.environ, SITQ_SECRET=secret, PYTHONPATH=str(REPO))
        proc = subprocess.Popen(
            [sys.executable, "-m", "sitq", "worker", url, "--import", "tests.conformance.tasks"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        worker_processes.procs.append(proc)
        assert await signed.get_value(good, timeout=30) == 3
        result = await plain.get_result(unsigned, timeout=30)
        assert result is not None and result.status == TaskStatus.FAILED
        assert "not signed" in (result.error or "")
