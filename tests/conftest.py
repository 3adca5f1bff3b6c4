"""Shared fixtures: one parametrized backend fixture for the conformance suite, worker
subprocesses that are always cleaned up, and waiting on conditions with a deadline.

The backends are listed here by name, never discovered: a backend whose module went missing is an
import error, not a backend quietly left out of the suite. Two more run the same suite on
clusters the session starts (a Redis Cluster and a 3-node NATS cluster with 3 replicas):
"redis-cluster" and "nats-cluster", marked ``cluster``. Starting them and running the suite
there takes time, so their cases run only when the ``-m`` expression names the marker
(``pytest tests/conformance -m cluster``); otherwise they are deselected.

When the ``CI`` environment variable is set, every skip is a failure (tests/ci_guard.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sitq import MemoryBackend, PostgresBackend, SQLiteBackend, TaskQueue
from sitq.backends.base import Backend
from tests import backend_nats, backend_redis
from tests.ci_guard import pytest_make_collect_report, pytest_runtest_makereport
from tests.services import postgres_dsn, require, require_module

if TYPE_CHECKING:
    from tests.servers import NatsCluster, RedisCluster

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport"]  # the CI guard's hooks

REPO = Path(__file__).resolve().parent.parent


@dataclass
class BackendFactory:
    """Makes backend objects that all point at one store, and its URL for subprocesses."""

    name: str
    make: Callable[[], Backend]
    url: str | None

    @property
    def shared(self) -> bool:
        return self.url is not None


def _memory(tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
    backend = MemoryBackend()
    return BackendFactory("memory", lambda: backend, None)


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
    path = tmp_path / "sitq.db"
    return BackendFactory("sqlite", lambda: SQLiteBackend(path), f"sqlite:///{path}")


def with_query(url: str, **params: str) -> str:
    """``url`` with query parameters added."""
    joiner = "&" if "?" in url else "?"
    return url + joiner + "&".join(f"{k}={v}" for k, v in params.items())


async def drop_postgres_schema(dsn: str, schema: str) -> None:
    """Remove a test's schema (and everything in it)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _postgres(tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
    require_module("asyncpg")
    dsn = postgres_dsn()
    require("postgres", dsn)
    schema = "t_" + uuid.uuid4().hex[:16]
    url = with_query(dsn, schema=schema)
    request.addfinalizer(lambda: asyncio.run(drop_postgres_schema(dsn, schema)))
    return BackendFactory("postgres", lambda: PostgresBackend.from_url(url), url)


Factory = Callable[[Path, pytest.FixtureRequest], BackendFactory]

#: Every backend, by name. Each one runs the whole conformance suite.
FACTORIES: dict[str, Factory] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgres": _postgres,
    "redis": backend_redis.make_factory,
    "nats": backend_nats.make_factory,
}
#: The backends that several processes can share (all but memory).
SHARED = [name for name in FACTORIES if name != "memory"]
#: The conformance suite on clusters of the session's own (cases marked ``cluster``).
CLUSTER_FACTORIES: dict[str, Factory] = {
    "redis-cluster": backend_redis.make_cluster_factory,
    "nats-cluster": backend_nats.make_cluster_factory,
}
_ALL_FACTORIES = {**FACTORIES, **CLUSTER_FACTORIES}
_CLUSTER_PARAMS = [pytest.param(name, marks=pytest.mark.cluster) for name in CLUSTER_FACTORIES]
_BACKEND_FIXTURES = ("backends", "shared_backends")


@pytest.fixture(params=[*FACTORIES, *_CLUSTER_PARAMS])
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    """Every backend, one test run each."""
    return _ALL_FACTORIES[request.param](tmp_path, request)


@pytest.fixture(params=[*SHARED, *_CLUSTER_PARAMS])
def shared_backends(request: pytest.FixtureRequest, tmp_path: Path) -> BackendFactory:
    """Every backend that several processes can share (all but memory)."""
    return _ALL_FACTORIES[request.param](tmp_path, request)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the cases on the session's clusters (and any other case marked ``cluster``)
    unless ``-m`` names the ``cluster`` marker,
    and the chaos runs (``tests/faults/test_chaos.py``, minutes long) unless it names ``chaos``:
    each is a group of its own (README, "Two commands")."""
    markexpr = config.option.markexpr or ""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        on_cluster = any(params.get(name) in CLUSTER_FACTORIES for name in _BACKEND_FIXTURES)
        on_cluster = on_cluster or item.get_closest_marker("cluster") is not None
        chaos = item.get_closest_marker("chaos") is not None
        if (on_cluster and "cluster" not in markexpr) or (chaos and "chaos" not in markexpr):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A Redis Cluster of three nodes for the whole session; killed at its end."""
    from tests.servers import RedisCluster

    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        asyncio.run(cluster.start())
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture(scope="session")
def nats_cluster_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """A 3-node NATS JetStream cluster for the whole session; killed at its end."""
    from tests.servers import NatsCluster

    cluster = NatsCluster(tmp_path_factory.mktemp("nats-cluster"))
    try:
        asyncio.run(cluster.start())
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture
async def queue(backends: BackendFactory) -> AsyncIterator[TaskQueue]:
    """A connected queue on each backend."""
    q = TaskQueue(backends.make())
    await q.connect()
    yield q
    await q.close()


@pytest.fixture
async def shared_queue(shared_backends: BackendFactory) -> AsyncIterator[TaskQueue]:
    """A connected queue on each backend that processes can share."""
    q = TaskQueue(shared_backends.make())
    await q.connect()
    yield q
    await q.close()


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    timeout: float = 15.0,
    interval: float = 0.02,
    message: str = "condition",
) -> None:
    """Wait for ``condition`` to hold, failing the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        await asyncio.sleep(interval)


class WorkerProcesses:
    """Starts ``sitq worker`` subprocesses and kills whatever is left at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        url: str,
        *,
        kind: str = "async",
        concurrency: int = 4,
        lease: float = 30.0,
        queues: tuple[str, ...] = (),
        extra: tuple[str, ...] = (),
    ) -> subprocess.Popen[bytes]:
        args = [
            sys.executable,
            "-m",
            "sitq",
            "worker",
            url,
            "--kind",
            kind,
            "-c",
            str(concurrency),
            "--lease",
            str(lease),
            "--import",
            "tests.conformance.tasks",
            "--log-level",
            "WARNING",
            "--poll-interval",
            "0.5",
            *extra,
        ]
        for q in queues:
            args += ["-q", q]
        return self._spawn(args)

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        log = open(self.tmp_path / f"worker-{len(self.procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.tmp_path,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def call(self, function: str, *args: str) -> subprocess.Popen[bytes]:
        """Run ``module:function(*args)`` in a new Python process (killed at teardown)."""
        code = (
            "import importlib, sys; m, f = sys.argv[1].rsplit(':', 1); "
            "getattr(importlib.import_module(m), f)(*sys.argv[2:])"
        )
        return self._spawn([sys.executable, "-c", code, function, *args])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        """SIGTERM (a graceful stop for a worker) and wait for the exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout)

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp_path / f"worker-{self.procs.index(proc)}.log").read_text()

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def worker_processes(tmp_path: Path) -> Iterator[WorkerProcesses]:
    """Worker subprocesses for one test; all killed (with their children) afterwards."""
    workers = WorkerProcesses(tmp_path)
    yield workers
    workers.kill_all()
