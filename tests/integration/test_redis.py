"""Redis-only behaviour: a server restart and dropped connections under a running worker,
``SCRIPT FLUSH`` mid-run, a three-node Redis Cluster, URLs and connection errors.

These tests start their own ``redis-server`` processes on free loopback ports (the shared test
server is never restarted, flushed or has its clients killed).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sitq import (
    AsyncWorker,
    BackendError,
    ConfigurationError,
    FixedBackoff,
    RetryPolicy,
    TaskQueue,
    TaskStatus,
    backend_from_url,
)
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, wait_until
from tests.services import in_ci

redis = pytest.importorskip("redis")
from sitq.backends.redis import RedisBackend  # noqa: E402


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install redis-server)"
        if in_ci():
            pytest.fail(f"{message}; CI is set, so this is a failure", pytrace=False)
        pytest.skip(message)
    return path


def _free_port(*, cluster: bool = False) -> int:
    """A free loopback port; for a cluster node, port + 10000 (its cluster bus) is free too."""
    if not cluster:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(1000):
        port = random.randint(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise AssertionError("no free pair of ports for a cluster node")


class RedisProcess:
    """One ``redis-server`` on a loopback port, in a directory of its own."""

    def __init__(self, binary: str, directory: Path, *args: str) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port(cluster="--cluster-enabled" in args)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--daemonize",
                "no",
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            start_new_session=True,
        )
        log.close()

    async def ready(self, timeout: float = 20.0) -> None:
        async def pong() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"redis-server exited: {(self.directory / 'server.log').read_text()[-2000:]}"
                )
            client = redis.asyncio.Redis(port=self.port, socket_connect_timeout=1)
            try:
                return bool(await client.ping())
            except (redis.exceptions.RedisError, OSError):
                return False
            finally:
                await client.aclose()

        await wait_until(pong, timeout=timeout, message=f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def admin(self) -> Any:
        return redis.asyncio.Redis(port=self.port)


@pytest.fixture
def servers() -> Iterator[list[RedisProcess]]:
    """Servers a test starts; all killed at teardown."""
    started: list[RedisProcess] = []
    yield started
    for server in started:
        server.kill()


async def _start(servers: list[RedisProcess], directory: Path, *args: str) -> RedisProcess:
    server = RedisProcess(_binary("redis-server"), directory, *args)
    servers.append(server)
    server.start()
    await server.ready()
    return server


def _items(log_dir: Path, label: str) -> Counter[int]:
    path = log_dir / f"{label}.log"
    if not path.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in path.read_text().splitlines() if line)


async def _enqueue_items(queue: TaskQueue, log_dir: Path, label: str, items: range) -> None:
    calls: list[Any] = [(tasks.record_item, (str(log_dir), label, i)) for i in items]
    for start in range(0, len(calls), 500):
        await queue.enqueue_many(calls[start : start + 500])


async def _succeeded(queue: TaskQueue) -> int:
    try:
        return sum(s.succeeded for s in await queue.stats())
    except BackendError:
        return -1


# -- restart and dropped connections ------------------------------------------------------------


async def test_worker_survives_server_restart_and_killed_connections(
    servers: list[RedisProcess], worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    server = await _start(
        servers, tmp_path / "redis", "--appendonly", "yes", "--appendfsync", "always"
    )
    url = f"redis://127.0.0.1:{server.port}/0?prefix=restart"
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    worker = worker_processes.start(url, concurrency=4, lease=5.0)
    admin = server.admin()

    def executed() -> int:
        return sum(_items(log_dir, "items").values())

    async def pubsub_clients() -> set[bytes]:
        try:
            listing = await admin.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
        except (redis.exceptions.RedisError, OSError):
            return set()
        return {line.split()[0] for line in listing.splitlines() if b"sub=" in line}

    async def worker_listening(not_in: set[bytes]) -> bool:
        return bool(await pubsub_clients() - not_in)

    queue = TaskQueue(url)
    await queue.connect()
    try:
        # The idle worker listens for wake-ups on its pub/sub connection.
        await wait_until(lambda: worker_listening(set()), message="the worker to listen")
        # 1. A restart (SIGKILL: appendfsync always keeps every acknowledged write) while the
        #    worker is busy.
        await _enqueue_items(queue, log_dir, "items", range(0, 2000))
        await wait_until(lambda: executed() >= 100, message="tasks running")
        server.kill()
        before_restart = executed()
        server.start()
        await server.ready()
        await _enqueue_items(queue, log_dir, "items", range(2000, 3000))
        await wait_until(
            lambda: executed() >= 3000, timeout=60, message="tasks processed after the restart"
        )
        # 2. Every client connection dropped, normal and pub/sub, while the worker is busy.
        await wait_until(lambda: worker_listening(set()), message="the worker to listen again")
        listeners = await pubsub_clients()
        await _enqueue_items(queue, log_dir, "items", range(3000, 4000))
        await wait_until(lambda: executed() >= 3100, message="tasks running")
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "normal") >= 2
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
        await _enqueue_items(queue, log_dir, "items", range(4000, 5000))
        await wait_until(lambda: executed() >= 5000, timeout=90, message="all 5,000 tasks executed")
        await wait_until(lambda: _succeeded_is(queue, 5000), message="5,000 results recorded")
        stats = {s.queue: s for s in await queue.stats()}["default"]
        assert (stats.pending, stats.running, stats.failed) == (0, 0, 0)
        assert before_restart < 2000, "the server was restarted while tasks were pending"
        await wait_until(lambda: worker_listening(listeners), message="a new pub/sub connection")
        # Wake-ups work on the new connection.
        task_id = await queue.enqueue(tasks.add, 2, 3)
        assert await queue.get_value(task_id, timeout=10) == 5
        assert worker.poll() is None, worker_processes.output(worker)
        assert "pub/sub connection failed" in worker_processes.output(worker)
    finally:
        await queue.close()
        await admin.aclose()
    items = _items(log_dir, "items")
    assert items == Counter(range(5000)), "every task executed exactly once"


async def _succeeded_is(queue: TaskQueue, total: int) -> bool:
    return await _succeeded(queue) == total


# -- SCRIPT FLUSH ---------------------------------------------------------------------------------


async def test_script_flush_mid_run_breaks_nothing(
    servers: list[RedisProcess], worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    url = f"redis://127.0.0.1:{server.port}/0?prefix=flush"
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    worker_processes.start(url, concurrency=4)
    admin = server.admin()
    queue = TaskQueue(url)
    await queue.connect()
    try:
        await _enqueue_items(queue, log_dir, "items", range(0, 1000))
        await wait_until(lambda: sum(_items(log_dir, "items").values()) >= 100)
        assert await admin.script_flush()
        # A pipelined enqueue (index writes and scripts), a single one, results and state.
        await _enqueue_items(queue, log_dir, "items", range(1000, 2000))
        assert await admin.script_flush()
        task_id = await queue.enqueue(tasks.add, 20, 22)
        assert await queue.get_value(task_id, timeout=20) == 42
        assert await admin.script_flush()
        async with AsyncWorker(queue.backend, queues=["other"], poll_interval=0.2):
            other = await queue.options(queue="other").enqueue(tasks.add, 1, 1)
            assert await queue.get_value(other, timeout=20) == 2
        await wait_until(
            lambda: sum(_items(log_dir, "items").values()) >= 2000,
            timeout=60,
            message="all 2,000 tasks executed",
        )
        await wait_until(lambda: _succeeded_is(queue, 2001 + 1), message="every result")
        assert await admin.script_flush()
        assert await queue.backend.purge_expired(0) == 0
        assert await queue.cancel(await queue.enqueue_in(60, tasks.add, 1, 1)) is True
    finally:
        await queue.close()
        await admin.aclose()
    assert _items(log_dir, "items") == Counter(range(2000))


# -- Redis Cluster --------------------------------------------------------------------------------


@pytest.fixture
async def cluster_url(servers: list[RedisProcess], tmp_path: Path) -> str:
    """A three-node Redis Cluster (no replicas) from the redis-server binary."""
    nodes = [
        await _start(
            servers,
            tmp_path / f"node{i}",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
            "--appendonly",
            "no",
        )
        for i in range(3)
    ]
    cli = shutil.which("redis-cli")
    if cli is not None:
        done = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    else:
        await _create_cluster_by_hand(nodes)

    async def cluster_ok() -> bool:
        for node in nodes:
            client = node.admin()
            try:
                info = await client.execute_command("CLUSTER", "INFO")
            finally:
                await client.aclose()
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or "cluster_known_nodes:3" not in text:
                return False
        return True

    await wait_until(cluster_ok, timeout=30, message="the cluster to be ready")
    return f"redis://127.0.0.1:{nodes[0].port}/0?cluster=true&prefix=c{uuid.uuid4().hex[:8]}"


async def _create_cluster_by_hand(nodes: list[RedisProcess]) -> None:
    bounds = [0, 5461, 10923, 16384]
    for i, node in enumerate(nodes):
        client = node.admin()
        try:
            await client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            if i:
                await client.execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[0].port)
        finally:
            await client.aclose()


def _slot(key: str) -> int:
    from redis.crc import key_slot

    return int(key_slot(key.encode()))


def _queues_on_different_nodes(prefix: str) -> tuple[str, str]:
    """Two queue names whose keys live on different nodes of an evenly split cluster."""
    third = {n: _slot(f"{{{prefix}:q{n}}}") * 3 // 16384 for n in range(100)}
    first = "q0"
    second = next(f"q{n}" for n, part in third.items() if part != third[0])
    return first, second


async def test_core_cases_on_a_redis_cluster(
    cluster_url: str, worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    prefix = cluster_url.rsplit("prefix=", 1)[1]
    backend = backend_from_url(cluster_url)
    assert isinstance(backend, RedisBackend) and backend.cluster
    assert "cluster" in backend.describe()
    queue = TaskQueue(backend)
    await queue.connect()
    try:
        # Enqueue and read back (the id index and the queue live in different slots).
        task_id = await queue.enqueue(tasks.add, 1, 2)
        assert await queue.get_status(task_id) == TaskStatus.PENDING
        assert await queue.get_status("no-such-task") is None

        # A worker process drains two queues that live on different nodes.
        first, second = _queues_on_different_nodes(prefix)
        assert _slot(f"{{{prefix}:{first}}}") != _slot(f"{{{prefix}:{second}}}")
        log_dir = tmp_path / "log"
        log_dir.mkdir()
        ids = []
        for name in (first, second):
            ids += await queue.options(queue=name).enqueue_many(
                [(tasks.record_item, (str(log_dir), name, i)) for i in range(200)]
            )
        worker_processes.start(cluster_url, concurrency=4, queues=(first, second, "default"))
        assert await queue.get_value(task_id, timeout=30) == 3
        for i in ids:
            result = await queue.get_result(i, timeout=30)
            assert result is not None and result.status == TaskStatus.SUCCESS
        assert _items(log_dir, first) == Counter(range(200))
        assert _items(log_dir, second) == Counter(range(200))
        stats = {s.queue: s for s in await queue.stats()}
        assert stats[first].succeeded == stats[second].succeeded == 200

        # Retries.
        policy = RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.05))
        flaky = await queue.options(retry=policy).enqueue(tasks.flaky, str(tmp_path), "f", 2)
        result = await queue.get_result(flaky, timeout=30)
        assert result is not None and result.status == TaskStatus.SUCCESS
        assert result.attempts == 3

        # Idempotent explicit ids.
        view = queue.options(task_id="order-42", queue=second)
        assert await view.enqueue(tasks.add, 2, 2) == "order-42"
        assert await view.enqueue(tasks.add, 9, 9) == "order-42"
        assert await queue.get_value("order-42", timeout=30) == 4
    finally:
        await queue.close()
    worker_processes.kill_all()

    # Cancellation (pending and running) and priorities, with an in-process worker.
    queue = TaskQueue(cluster_url)
    await queue.connect()
    try:
        pending = await queue.enqueue_in(60, tasks.add, 1, 1)
        assert await queue.cancel(pending) is True
        result = await queue.get_result(pending)
        assert result is not None and result.status == TaskStatus.CANCELLED
        assert await queue.cancel(pending) is False

        labels = []
        for i, priority in enumerate([0, 5, 0, 9, 5, 0]):
            label = f"p{priority}-{i}"
            labels.append((priority, i, label))
            await queue.options(priority=priority, queue="prio").enqueue(
                tasks.record, str(tmp_path), label
            )
        running = await queue.enqueue(tasks.sleep_async, 60)
        async with AsyncWorker(queue.backend, concurrency=1, queues=["prio"], poll_interval=0.2):
            await wait_until(
                lambda: all(tasks.executions(tmp_path, lb) for _, _, lb in labels),
                message="the priority tasks",
            )
        starts = {lb: tasks.executions(tmp_path, lb)[0]["start"] for _, _, lb in labels}
        expected = [lb for _, _, lb in sorted(labels, key=lambda t: (-t[0], t[1]))]
        assert sorted(starts, key=lambda lb: starts[lb]) == expected

        async with AsyncWorker(queue.backend, lease=1.5, poll_interval=0.2):
            await wait_until(
                lambda: _status_is(queue, running, TaskStatus.RUNNING), message="running"
            )
            assert await queue.cancel(running) is True
            result = await queue.get_result(running, timeout=20)
        assert result is not None and result.status == TaskStatus.CANCELLED
    finally:
        await queue.close()


async def _status_is(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status


# -- URLs and errors ------------------------------------------------------------------------------


def test_url_options_and_describe_without_password() -> None:
    backend = backend_from_url(
        "redis://:s3cret@example.com:6380/2?prefix=app1&socket_keepalive=true"
    )
    assert isinstance(backend, RedisBackend)
    assert backend.prefix == "app1" and not backend.cluster
    assert "s3cret" not in backend.describe() and "app1" in backend.describe()
    assert "example.com:6380/2" in backend.describe()
    tls = backend_from_url("rediss://example.com?cluster=true&command_timeout=3")
    assert isinstance(tls, RedisBackend) and tls.cluster and tls.command_timeout == 3.0
    assert RedisBackend(prefix="x").describe() == "redis://localhost:6379/0 (prefix x)"
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBackend(prefix="has space")
    with pytest.raises(ConfigurationError, match="cluster"):
        backend_from_url("redis://localhost?cluster=maybe")
    with pytest.raises(ConfigurationError, match="command_timeout"):
        backend_from_url("redis://localhost?command_timeout=soon")


async def test_unreachable_server_is_a_backend_error() -> None:
    port = _free_port()
    backend = RedisBackend(port=port, connect_timeout=2)
    with pytest.raises(BackendError, match=str(port)):
        await backend.connect()
    with pytest.raises(BackendError, match="not connected"):
        await backend.get_task("x")
    assert not backend.connected


async def test_a_dead_server_mid_use_is_a_backend_error_then_recovers(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    queue = TaskQueue(f"redis://127.0.0.1:{server.port}/0?prefix=dead")
    await queue.connect()
    try:
        task_id = await queue.enqueue(tasks.add, 1, 1)
        server.kill()
        with pytest.raises(BackendError, match="Redis"):
            await queue.get_status(task_id)
        with pytest.raises(BackendError):
            await queue.enqueue(tasks.add, 1, 1)
        server.start()
        await server.ready()
        # No persistence on this server: the task is gone, but the client works again.
        assert await queue.get_status(task_id) is None
        assert await queue.get_status(await queue.enqueue(tasks.add, 2, 2)) == TaskStatus.PENDING
    finally:
        await queue.close()
