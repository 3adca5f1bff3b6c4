"""docs/operating.md, Metrics: a real ``sitq worker --metrics-port`` counts the tasks it runs,
exactly, for every worker kind (a process worker's tasks run in its children), on SQLite and
Redis; ``Worker(metrics=...)`` does the same in a program; and without prometheus-client the
flag fails at startup with the ``pip install`` that fixes it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from sitq import AsyncWorker, ConfigurationError, RetryPolicy, TaskQueue, TaskStatus
from sitq.retry import FixedBackoff
from tests.conformance import tasks
from tests.conftest import FACTORIES, REPO, WorkerProcesses, wait_until
from tests.services import require_module

prometheus_client = require_module("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from sitq.observe.metrics import STATUSES, WorkerMetrics  # noqa: E402

FN = "tests.conformance.tasks."
METRICS_AT = re.compile(r"metrics at (http://\S+/metrics)")


class Scrape:
    """One scrape of ``/metrics``, parsed by prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples.append((sample.name, dict(sample.labels), sample.value))

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``."""
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and labels.items() <= have.items()
        )

    def started(self, function: str, queue: str = "m") -> int:
        return int(self.total("sitq_tasks_started_total", queue=queue, function=FN + function))

    def finished(self, function: str, queue: str = "m") -> dict[str, int]:
        """The finished counts of ``function`` on ``queue``, by status (zeros left out)."""
        counts = {
            status: int(
                self.total(
                    "sitq_tasks_finished_total", queue=queue, function=FN + function, status=status
                )
            )
            for status in STATUSES
        }
        return {status: n for status, n in counts.items() if n}

    def observed(self, function: str, queue: str = "m") -> int:
        name = "sitq_task_duration_seconds_count"
        return int(self.total(name, queue=queue, function=FN + function))

    def running(self, queue: str = "m") -> int:
        return int(self.total("sitq_tasks_running", queue=queue))

    def functions(self) -> set[str]:
        return {
            have["function"]
            for sample, have, _ in self.samples
            if sample == "sitq_tasks_started_total"
        }


async def scrape(endpoint: str) -> Scrape:
    def get() -> str:
        with urllib.request.urlopen(endpoint, timeout=10) as response:
            return str(response.read().decode())

    return Scrape(await asyncio.to_thread(get))


async def metrics_endpoint(workers: WorkerProcesses, proc: subprocess.Popen[bytes]) -> str:
    """The URL the worker serves its metrics at (its first lines name it: port 0 picks one)."""
    found: list[str] = []

    def named() -> bool:
        assert proc.poll() is None, workers.output(proc)
        match = METRICS_AT.search(workers.output(proc))
        if match:
            found.append(match.group(1))
        return bool(match)

    await wait_until(named, timeout=30, message="the worker's metrics line")
    return found[0]


def assert_consistent(now: Scrape) -> None:
    """What every scrape shows: each started attempt is finished once or still running, and
    the histogram has one observation per finished attempt."""
    started = finished = 0
    for function in now.functions():
        name = function.removeprefix(FN)
        ended = sum(now.finished(name).values())
        assert now.observed(name) == ended, function
        started += now.started(name)
        finished += ended
    assert started == finished + now.running()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("kind", ["async", "thread", "process"])
async def test_the_counters_move_by_the_tasks_run(
    kind: str,
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    worker_processes: WorkerProcesses,
) -> None:
    store = FACTORIES[backend](tmp_path, request)
    assert store.url is not None
    proc = worker_processes.start(
        store.url, kind=kind, concurrency=4, queues=("m",), extra=("--metrics-port", "0")
    )
    endpoint = await metrics_endpoint(worker_processes, proc)
    first = await scrape(endpoint)
    assert first.functions() == set()
    assert ("sitq_tasks_running", {"queue": "m"}, 0.0) in first.samples  # shown from the start

    release = tmp_path / "release"
    try:
        async with TaskQueue(store.make()) as queue:
            q = queue.options(queue="m")
            quick = [await q.enqueue(tasks.add, i, 1) for i in range(3)]
            quick += [await q.enqueue(tasks.fail, "boom") for _ in range(2)]
            quick.append(
                await q.options(
                    retry=RetryPolicy(max_attempts=2, backoff=FixedBackoff(0.05))
                ).enqueue(tasks.flaky, str(tmp_path), "flaky", 1)
            )
            where = await q.enqueue(tasks.sleep_then_pid, 0)
            for task_id in quick:
                assert await queue.get_result(task_id, timeout=30) is not None
            pid = await queue.get_value(where, timeout=30)
            if kind == "process":
                assert pid != proc.pid  # run by a child process, counted by the worker
            else:
                assert pid == proc.pid
            timed_out = await q.options(timeout=0.3).enqueue(tasks.wait_for_file, str(release))
            result = await queue.get_result(timed_out, timeout=30)
            assert result is not None and result.status == TaskStatus.FAILED

            # A task that runs until it is cancelled: the gauge shows it while it runs.
            held = await q.enqueue(tasks.wait_for_file, str(release))
            seen: list[Scrape] = []

            async def running_now() -> bool:
                seen.append(await scrape(endpoint))
                return seen[-1].running() == 1

            await wait_until(running_now, timeout=30, message="the running gauge at 1")
            during = seen[-1]
            assert during.started("wait_for_file") == 2
            assert during.finished("wait_for_file") == {"timed_out": 1}
            assert_consistent(during)
            assert await queue.get_status(held) == TaskStatus.RUNNING
            assert await queue.cancel(held)
            result = await queue.get_result(held, timeout=30)
            assert result is not None and result.status == TaskStatus.CANCELLED
    finally:
        release.touch()  # lets the threads that ran the stopped tasks return

    expected_started = {"add": 3, "fail": 2, "flaky": 2, "sleep_then_pid": 1, "wait_for_file": 2}
    expected = {
        "add": {"success": 3},
        "fail": {"failed": 2},
        "flaky": {"retrying": 1, "success": 1},
        "sleep_then_pid": {"success": 1},
        "wait_for_file": {"timed_out": 1, "cancelled": 1},
    }
    done: list[Scrape] = []

    async def all_counted() -> bool:
        done.append(await scrape(endpoint))
        return done[-1].running() == 0

    await wait_until(all_counted, timeout=30, message="every outcome counted")
    after = done[-1]
    assert after.functions() == {FN + name for name in expected}
    for name, statuses in expected.items():
        assert after.started(name) == expected_started[name], name
        assert after.finished(name) == statuses, name
        assert after.observed(name) == sum(statuses.values()), name
    assert_consistent(after)
    for name in expected:  # the same again: nothing counted late, nothing twice
        again = await scrape(endpoint)
        assert again.finished(name) == after.finished(name)
    assert after.total("process_resident_memory_bytes") > 0  # the process's own series
    assert worker_processes.stop(proc) == 0


async def test_lost_and_refused_attempts(tmp_path: Path, worker_processes: WorkerProcesses) -> None:
    """A worker whose loop is blocked past its lease loses one task (stopped while it still
    runs) and has the outcome of another refused (it ended, but another claim holds it);
    each attempt is counted once, under the status its log line names."""
    url = f"sqlite:///{tmp_path / 'lost.db'}"
    proc = worker_processes.start(
        url, concurrency=4, lease=1.0, queues=("m",), extra=("--metrics-port", "0")
    )
    endpoint = await metrics_endpoint(worker_processes, proc)
    async with TaskQueue(url) as queue:
        q = queue.options(queue="m")
        ids = [await q.enqueue(tasks.block_loop, 3.0, 2.0), await q.enqueue(tasks.block_loop, 3.0)]

        async def both_running() -> bool:
            return all([await queue.get_status(i) == TaskStatus.RUNNING for i in ids])

        await wait_until(both_running, message="both running")
        worker_processes.start(url, concurrency=4, lease=30.0, queues=("m",))
        for task_id in ids:
            assert await queue.get_value(task_id, timeout=30) == "unblocked"
    seen: list[Scrape] = []

    async def both_ended() -> bool:
        seen.append(await scrape(endpoint))
        return sum(seen[-1].finished("block_loop").values()) >= 2

    await wait_until(both_ended, timeout=30, message="both attempts counted")
    output = worker_processes.output(proc)
    lines = Counter(
        "lost" if "lost its lease" in line else "refused"
        for line in output.splitlines()
        if "lost its lease" in line or "outcome refused" in line
    )
    after = seen[-1]
    assert after.started("block_loop") == 2
    assert after.finished("block_loop") == dict(lines), output
    assert set(lines) <= {"lost", "refused"} and sum(lines.values()) == 2
    assert_consistent(after)
    assert worker_processes.stop(proc) == 0


# -- without the extra ---------------------------------------------------------------------

HIDE_PROMETHEUS = """
import sys


class Hidden:
    def find_spec(self, name, path=None, target=None):
        if name == "prometheus_client" or name.startswith("prometheus_client."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hidden())
"""


def python(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_metrics_port_without_the_extra_fails_at_startup(tmp_path: Path) -> None:
    store = tmp_path / "never.db"
    cli = HIDE_PROMETHEUS + "from sitq.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    done = python(cli, "worker", f"sqlite:///{store}", "--metrics-port", "0", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("sitq: --metrics-port needs the 'prometheus_client' package")
    assert "pip install 'sitq[metrics]'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # that error, and no worker started
    assert not store.exists()


def test_sitq_works_without_the_extra_until_metrics_are_asked_for(tmp_path: Path) -> None:
    code = HIDE_PROMETHEUS + (
        "import sitq, sitq.cli, sitq.observe.metrics\n"
        "from sitq import AsyncWorker, MissingDependencyError\n"
        "AsyncWorker('sqlite:///x.db')\n"
        "try:\n"
        "    AsyncWorker('sqlite:///x.db', metrics=True)\n"
        "except MissingDependencyError as exc:\n"
        "    print(exc)\n"
    )
    done = python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pip install 'sitq[metrics]'" in done.stdout


def test_importing_sitq_does_not_import_prometheus_client(tmp_path: Path) -> None:
    code = (
        "import sys, sitq, sitq.cli, sitq.worker, sitq.observe.metrics\n"
        "from sitq.cli import build_parser\n"
        "build_parser()\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    done = python(code, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# -- the Python API ------------------------------------------------------------------------


def _parse(metrics: WorkerMetrics) -> Scrape:
    return Scrape(prometheus_client.generate_latest(metrics.registry).decode())


async def test_two_workers_in_one_process_count_apart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'two.db'}"
    async with TaskQueue(url) as queue:
        ids = [await queue.options(queue="m").enqueue(tasks.add, 1, 2) for _ in range(3)]
        ids += [await queue.options(queue="other").enqueue(tasks.fail, "x") for _ in range(2)]
        one = AsyncWorker(url, queues=["m"], metrics=True, poll_interval=0.1)
        two = AsyncWorker(url, queues=["other"], metrics=True, poll_interval=0.1)
        assert one.metrics is not None and two.metrics is not None
        assert one.metrics.registry is not two.metrics.registry
        assert one.metrics.registry is not prometheus_client.REGISTRY
        async with one, two:
            for task_id in ids:
                assert await queue.get_result(task_id, timeout=30) is not None
            await wait_until(lambda: _parse(one.metrics).finished("add") == {"success": 3})
            await wait_until(
                lambda: _parse(two.metrics).finished("fail", queue="other") == {"failed": 2}
            )
    first, second = _parse(one.metrics), _parse(two.metrics)
    assert first.functions() == {FN + "add"} and first.started("add") == 3
    assert second.functions() == {FN + "fail"}
    assert second.started("fail", queue="other") == 2 and second.observed("fail", "other") == 2
    assert {have["queue"] for name, have, _ in first.samples if name == "sitq_tasks_running"} == {
        "m"
    }


async def test_one_metrics_shared_by_two_workers_adds_up(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    registry = prometheus_client.CollectorRegistry()
    metrics = WorkerMetrics(registry)
    port = metrics.serve(0)
    try:
        async with TaskQueue(url) as queue:
            ids = [await queue.options(queue="m").enqueue(tasks.add, i, 2) for i in range(6)]
            workers = [
                AsyncWorker(url, queues=["m"], metrics=metrics, concurrency=1, poll_interval=0.1)
                for _ in range(2)
            ]
            async with workers[0], workers[1]:
                for task_id in ids:
                    assert await queue.get_result(task_id, timeout=30) is not None

                async def six() -> bool:
                    now = await scrape(f"http://127.0.0.1:{port}/metrics")
                    return now.finished("add") == {"success": 6}

                await wait_until(six)
        now = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert now.started("add") == 6 and now.observed("add") == 6 and now.running() == 0
    finally:
        metrics.close()


def test_the_metrics_argument_is_checked() -> None:
    with pytest.raises(ConfigurationError, match="metrics must be True, False or a"):
        AsyncWorker("memory://", metrics="yes")  # type: ignore[arg-type]
    assert AsyncWorker("memory://").metrics is None
    assert AsyncWorker("memory://", metrics=False).metrics is None
