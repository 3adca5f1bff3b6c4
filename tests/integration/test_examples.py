"""The published examples (examples/), run verbatim as scripts, print what they promise."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sitq import SyncTaskQueue

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def _run(script: str, cwd: Path, timeout: float = 60) -> str:
    shutil.copy(EXAMPLES / script, cwd / script)
    done = subprocess.run(
        [sys.executable, script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_example_1_basic_usage(tmp_path: Path) -> None:
    out = _run("main.py", tmp_path).splitlines()
    assert re.fullmatch(rf"Task {UUID} enqueued\.", out[0])
    assert out[1:] == [
        "Hello, World",
        "Result received: success",
        "Task return value: Greetings, World!",
    ]
    assert (tmp_path / "example_queue.db").exists()


def test_schedules_example(tmp_path: Path) -> None:
    out = _run("schedules.py", tmp_path).splitlines()
    assert out == [
        "heartbeat: '* * * * * *' in UTC",
        "report: '30 2 * * *' in Europe/Paris",
        "api: ['tenant-7#0', 'tenant-7#1', 'tenant-7#2', 'tenant-7#3', 'tenant-7#4', 'tenant-7#5']",
        "holding nightly-report",
        "heartbeats ran: True",
    ]


def test_example_3_cpu_bound_process_worker(tmp_path: Path) -> None:
    out = _run("cpu_task_example.py", tmp_path, timeout=120).splitlines()
    assert out == ["Enqueuing CPU-bound task...", "Fibonacci result: 9227465"]


def test_example_4_sync_wrapper_with_a_separate_worker(tmp_path: Path) -> None:
    out = _run("sync_example.py", tmp_path).splitlines()
    match = re.fullmatch(rf"Task ({UUID}) enqueued\.", out[0])
    assert match is not None
    task_id = match.group(1)
    worker = subprocess.Popen(
        [sys.executable, "-m", "sitq", "worker", "sqlite:///sync_queue.db"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        with SyncTaskQueue(backend=f"sqlite:///{tmp_path / 'sync_queue.db'}") as queue:
            assert queue.get_value(task_id, timeout=30) == 15
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
        assert worker.returncode == 0, output
        assert "stopping gracefully" in output
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


# SHA-256 of each example as first published (its code block in the original description):
# a change to an example, even of one character, fails this test. The examples are a promise to
# the users who copied them: they must keep running unchanged.
PUBLISHED = {
    "main.py": "b62a84ea60cd4a355302e96d6d36547d9e572f8fdac6482bafcb8e33698320c9",
    "cpu_task_example.py": "dba8fe346f2f065c4061805904d67b9be803ef0b42174eef51eae30eb682ef7d",
    "sync_example.py": "e129501d6a58299de8d1d870bb2aa42bd523ff2e0072728bf6635e58954f10e6",
}


@pytest.mark.parametrize("script", sorted(PUBLISHED))
def test_examples_are_the_published_examples_verbatim(script: str) -> None:
    digest = hashlib.sha256((EXAMPLES / script).read_bytes()).hexdigest()
    assert digest == PUBLISHED[script], f"examples/{script} differs from the published example"


def test_search_index_debounce_example(tmp_path: Path) -> None:
    out = _run("search_index_debounce.py", tmp_path).splitlines()
    assert out == [
        "indexed doc 42: 'Debounce runs a burst of calls once'",
        "index updates: 1, at least 0.5 s after the last save",
        "indexed doc 42: 'Edited'",
        "index updates: 2",
    ]


def test_rate_limited_api_example(tmp_path: Path) -> None:
    out = _run("rate_limited_api.py", tmp_path).splitlines()
    assert out == [
        "12 pages fetched, 0 refused by the API",
        "most calls in any second: 5",
        "the twelve calls took over 2 s: True",
        "the health check did not wait for them: True",
    ]
