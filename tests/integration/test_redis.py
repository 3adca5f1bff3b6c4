"""Redis-only behaviour: a server restart and dropped connections under a running worker,
``SCRIPT FLUSH`` mid-run, a three-node Redis Cluster, URLs and connection errors.

These tests start their own ``redis-server`` processes on free loopback ports (the shared test
server is never restarted, flushed or has its clients killed).
"""

from __future__ import annotations

import asyncio
import random
import time
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
from sitq.models import (
    Claim,
    Finish,
    LeaseState,
    QueueStats,
    Release,
    Reschedule,
)
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, wait_until
from tests.servers import RedisCluster, RedisProcess, free_port, redis_server
from tests.services import require_module

redis = require_module("redis")
from sitq.backends.redis import RedisBackend  # noqa: E402
from sitq.backends.redis._scripts import evalsha  # noqa: E402


@pytest.fixture
def servers() -> Iterator[list[RedisProcess]]:
    """Servers a test starts; all killed at teardown."""
    started: list[RedisProcess] = []
    yield started
    for server in started:
        server.kill()


async def _start(servers: list[RedisProcess], directory: Path, *args: str) -> RedisProcess:
    server = RedisProcess(redis_server(), directory, *args)
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
def cluster_url(redis_cluster: RedisCluster) -> str:
    """The session's three-node Redis Cluster, under a key prefix of this test's own."""
    return redis_cluster.url(f"c{uuid.uuid4().hex[:8]}")


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
        for n, priority in enumerate([0, 5, 0, 9, 5, 0]):
            label = f"p{priority}-{n}"
            labels.append((priority, n, label))
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
    assert RedisBackend().max_connections == 100
    bounded = backend_from_url("redis://localhost?max_connections=7")
    assert isinstance(bounded, RedisBackend) and bounded.max_connections == 7
    assert bounded.url == "redis://localhost"
    for bad in ("many", "0", "2.5"):
        with pytest.raises(ConfigurationError, match="max_connections"):
            backend_from_url(f"redis://localhost?max_connections={bad}")
    with pytest.raises(ConfigurationError, match="max_connections"):
        RedisBackend(max_connections=True)


def test_the_constructor_reads_the_url_options_too() -> None:
    backend = RedisBackend(url="redis://localhost/3?prefix=app2&connect_timeout=2")
    assert backend.prefix == "app2" and backend.connect_timeout == 2.0
    assert backend.url == "redis://localhost/3" and "prefix app2" in backend.describe()
    same = RedisBackend(url="redis://localhost/3?prefix=app2", prefix="app2")
    assert same.prefix == "app2"
    with pytest.raises(ConfigurationError, match="prefix is set twice"):
        RedisBackend(url="redis://localhost?prefix=app2", prefix="app3")
    with pytest.raises(ConfigurationError, match="max_connections is set twice"):
        RedisBackend(url="redis://localhost?max_connections=5", max_connections=6)
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBackend(url="redis://localhost?prefix=has%20space")


async def test_unreachable_server_is_a_backend_error() -> None:
    port = free_port()
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


# -- concurrency keys, crons and locks ------------------------------------------------------------


def _settled(claim: Claim) -> Finish:
    now = time.time()
    return Finish(
        claim.ref,
        TaskStatus.SUCCESS,
        None,
        None,
        None,
        now,
        now + 3600,
    )


async def _keyed_leftovers(admin: Any, prefix: str) -> list[bytes]:
    """The concurrency-key bookkeeping still in the store (running and parked sets)."""
    return [key async for key in admin.scan_iter(match=f"{prefix}:*:ck*", count=1000)]


async def test_keyed_claims_on_many_connections_never_exceed_their_limits(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    url = f"redis://127.0.0.1:{server.port}/0?prefix=keys"
    limits = {"a": 1, "b": 2, "c": 3}
    queue = TaskQueue(url)
    await queue.connect()
    clients = [RedisBackend.from_url(url) for _ in range(8)]
    admin = server.admin()
    try:
        key_of: dict[str, str] = {}
        for key, limit in limits.items():
            view = queue.options(concurrency_key=key, concurrency_limit=limit)
            for task_id in await view.enqueue_many([(tasks.add, (i, i)) for i in range(60)]):
                key_of[task_id] = key
        await queue.enqueue_many([(tasks.add, (i, i)) for i in range(60)])
        total = 240
        for client in clients:
            await client.connect()
        holding: dict[str, set[str]] = {key: set() for key in limits}
        peak = dict.fromkeys(limits, 0)
        finished: set[str] = set()
        rng = random.Random(7)

        async def work(i: int, backend: RedisBackend) -> None:
            while len(finished) < total:
                claims = await backend.claim(["default"], 3, f"w{i}", 30)
                # Added after the claim returns and removed before the settle is sent, so
                # `holding` never counts more than the server has running.
                for c in claims:
                    key = key_of.get(c.task_id)
                    if key is not None:
                        holding[key].add(c.task_id)
                        peak[key] = max(peak[key], len(holding[key]))
                for c in claims:
                    await asyncio.sleep(0)  # the other clients claim while this one holds
                    ref = c.ref
                    roll = rng.random()
                    settlement: Finish | Release | Reschedule
                    if roll < 0.15:
                        settlement = Release(ref)
                    elif roll < 0.3:
                        settlement = Reschedule(ref, time.time(), "again", None)
                    else:
                        settlement = _settled(c)
                    key = key_of.get(c.task_id)
                    if key is not None:
                        holding[key].discard(c.task_id)
                    assert await backend.settle([settlement]) == [True]
                    if isinstance(settlement, Finish):
                        finished.add(c.task_id)
                if not claims:
                    await backend.wait_for_work(["default"], 0.5)

        await asyncio.wait_for(asyncio.gather(*(work(i, b) for i, b in enumerate(clients))), 120)
        assert all(peak[key] <= limit for key, limit in limits.items()), peak
        assert peak["c"] >= 2, "the clients never ran keyed tasks side by side"
        (stats,) = await queue.stats()
        assert (stats.pending, stats.running, stats.succeeded) == (0, 0, total)
        assert await _keyed_leftovers(admin, "keys") == []
    finally:
        for client in clients:
            await client.close()
        await queue.close()
        await admin.aclose()


async def test_a_full_key_parks_its_tasks_without_holding_back_the_rest(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    queue = TaskQueue(f"redis://127.0.0.1:{server.port}/0?prefix=park")
    await queue.connect()
    admin = server.admin()
    backend = queue.backend
    try:
        keyed = queue.options(concurrency_key="k", concurrency_limit=1, priority=5)
        ids: list[str] = []
        for start in range(0, 1500, 500):
            ids += await keyed.enqueue_many(
                [(tasks.add, (i, i)) for i in range(start, start + 500)]
            )
        plain = await queue.enqueue(tasks.add, 1, 1)
        (first,) = await backend.claim(["default"], 1, "w", 30)
        assert first.task_id == ids[0]
        # More blocked tasks than one claim script parks: the next call parks its share and
        # comes back empty-handed, the one after reaches the unkeyed task.
        assert await backend.claim(["default"], 1, "w", 30) == []
        (second,) = await backend.claim(["default"], 1, "w", 30)
        assert second.task_id == plain
        assert await backend.claim(["default"], 5, "w", 30) == []
        (stats,) = await queue.stats()
        assert (stats.pending, stats.running) == (1499, 2)
        assert await queue.get_status(ids[700]) == TaskStatus.PENDING

        # A parked task cancels like any pending task.
        assert await queue.cancel(ids[5]) is True
        assert await queue.get_status(ids[5]) == TaskStatus.CANCELLED
        # A settle lets the next one in order out, and only that one.
        assert await backend.settle([_settled(first)]) == [True]
        (nxt,) = await backend.claim(["default"], 5, "w", 30)
        assert nxt.task_id == ids[1]
        # A task let out of parking and cancelled before it ran passes its turn on.
        assert await backend.settle([_settled(nxt)]) == [True]
        assert await queue.cancel(ids[2]) is True
        (after,) = await backend.claim(["default"], 5, "w", 30)
        assert after.task_id == ids[3]
        assert await backend.claim(["default"], 5, "w", 30) == []
        assert await backend.purge_expired(time.time()) == 0
        (stats,) = await queue.stats()
        assert (stats.pending, stats.running, stats.succeeded, stats.cancelled) == (
            1495,
            2,
            2,
            2,
        )
    finally:
        await queue.close()
        await admin.aclose()


async def test_a_lost_keyed_task_whose_key_filled_up_waits_parked(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    queue = TaskQueue(f"redis://127.0.0.1:{server.port}/0?prefix=lost")
    await queue.connect()
    backend = queue.backend
    try:
        # Two limits on one key: `lost` fits only alone, `wide` fits beside one other.
        lost = await queue.options(concurrency_key="k", concurrency_limit=1, priority=9).enqueue(
            tasks.add, 1, 1
        )
        wide = await queue.options(concurrency_key="k", concurrency_limit=2).enqueue(
            tasks.add, 2, 2
        )
        (dead,) = await backend.claim(["default"], 1, "dead-worker", 0.3)
        assert dead.task_id == lost
        (other,) = await backend.claim(["default"], 1, "w", 30)
        assert other.task_id == wide

        async def parked() -> bool:
            # Its lease ran out, but `wide` now fills its key: pending again, not run.
            assert await backend.claim(["default"], 5, "w", 30) == []
            return await queue.get_status(lost) == TaskStatus.PENDING

        await wait_until(parked, timeout=15, message="the lost task to be parked")
        ref = dead.ref
        assert await backend.extend_lease([ref], 30) == [LeaseState.LOST]
        assert await backend.settle([_settled(dead)]) == [False]
        assert await backend.settle([_settled(other)]) == [True]
        (again,) = await backend.claim(["default"], 5, "w", 30)
        assert again.task_id == lost and again.attempts == 2
    finally:
        await queue.close()


async def test_worker_processes_respect_a_concurrency_limit(
    servers: list[RedisProcess], worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    url = f"redis://127.0.0.1:{server.port}/0?prefix=procs"
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    queue = TaskQueue(url)
    await queue.connect()
    try:
        keyed = queue.options(concurrency_key="tenant-7", concurrency_limit=2)
        ids = await keyed.enqueue_many([(tasks.record, (str(log_dir), "k", 0.1))] * 20)
        ids += await queue.enqueue_many([(tasks.record, (str(log_dir), "free", 0.1))] * 10)
        for _ in range(3):
            worker_processes.start(url, concurrency=4)
        for task_id in ids:
            result = await queue.get_result(task_id, timeout=60)
            assert result is not None and result.status == TaskStatus.SUCCESS
    finally:
        await queue.close()
    runs = tasks.executions(log_dir, "k")
    assert len(runs) == 20
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2, f"{peak} tasks of one key ran at once"
    assert len({r["pid"] for r in runs}) >= 2, "one worker process ran every keyed task"


async def test_locks_and_crons_keep_to_the_server_and_survive_script_flush(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    backend = RedisBackend(port=server.port, prefix="lc")
    await backend.connect()
    admin = server.admin()
    try:
        assert await admin.script_flush()
        assert await backend.acquire_lock("job:{7}", "t1", 20)
        ttl = await admin.pttl("lc:lock:job:{7}")
        assert 0 < ttl <= 20_000, "the TTL lives on the server"
        assert await backend.acquire_lock("job:{7}", "t2", 20) is False
        assert await admin.script_flush()
        assert await backend.extend_lock("job:{7}", "t1", 60)
        assert 20_000 < await admin.pttl("lc:lock:job:{7}") <= 60_000
        assert await admin.script_flush()
        assert await backend.release_lock("job:{7}", "t2") is False
        assert await backend.release_lock("job:{7}", "t1") is True
        assert await admin.exists("lc:lock:job:{7}") == 0

        assert await admin.script_flush()
        await backend.put_cron("nightly", b"def", 60.0)
        assert await admin.script_flush()
        assert await backend.advance_cron("nightly", 60.0, 120.0)
        assert await backend.advance_cron("nightly", 60.0, 120.0) is False
        await backend.put_cron("nightly", b"def2", 0.0)
        assert [(r.name, r.definition, r.last_tick) for r in await backend.list_crons()] == [
            ("nightly", b"def2", 120.0)
        ]
        assert await backend.delete_cron("nightly")
        assert await backend.list_crons() == []
        # What is left is the store's format version and the record of the advance (for a
        # retry), which expires by itself.
        left = {k async for k in admin.scan_iter(match="lc:*")}
        assert b"lc:{lc:queues}:format" in left
        (record,) = left - {b"lc:{lc:queues}:format"}
        assert b":advance:" in record and 0 < await admin.pttl(record) <= 10_000
    finally:
        await backend.close()
        await admin.aclose()


async def test_keys_crons_and_locks_on_a_redis_cluster(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    prefix = cluster_url.rsplit("prefix=", 1)[1]
    first, second = _queues_on_different_nodes(prefix)
    clients = [RedisBackend.from_url(cluster_url) for _ in range(4)]
    queue = TaskQueue(clients[0])
    await queue.connect()
    try:
        for client in clients[1:]:
            await client.connect()
        for name in (first, second):
            view = queue.options(queue=name, concurrency_key="k", concurrency_limit=2)
            await view.enqueue_many([(tasks.add, (i, i)) for i in range(10)])
        plain = await queue.options(queue=second).enqueue(tasks.add, 0, 0)
        batches = await asyncio.gather(
            *(c.claim([first, second], 3, f"w{i}", 30) for i, c in enumerate(clients))
        )
        claimed = [c for batch in batches for c in batch]
        claimed += await clients[1].claim([first, second], 10, "w", 30)
        assert Counter(c.queue for c in claimed) == {first: 2, second: 3}
        done = next(c for c in claimed if c.queue == second and c.task_id != plain)
        assert await clients[2].settle([_settled(done)]) == [True]
        assert len(await clients[3].claim([first, second], 10, "w", 30)) == 1

        await clients[0].put_cron("every-minute", b"d", 0.0)
        wins = await asyncio.gather(
            *(c.advance_cron("every-minute", 0.0, 60.0) for c in clients * 3)
        )
        assert wins.count(True) == 1
        grabs = await asyncio.gather(
            *(c.acquire_lock("deploy", f"t{i}", 30) for i, c in enumerate(clients * 3))
        )
        assert grabs.count(True) == 1
        winner = f"t{grabs.index(True)}"

        for node in redis_cluster.nodes:
            admin = node.admin()
            try:
                assert await admin.script_flush()
            finally:
                await admin.aclose()
        assert await clients[1].extend_lock("deploy", winner, 30)
        assert await clients[2].release_lock("deploy", "someone-else") is False
        assert await clients[3].release_lock("deploy", winner)
        assert await clients[1].advance_cron("every-minute", 60.0, 120.0)
        (rec,) = await clients[2].list_crons()
        assert (rec.name, rec.last_tick) == ("every-minute", 120.0)
        assert await clients[3].claim([first, second], 10, "w", 30) == []
        stats = {s.queue: s for s in await clients[0].stats(time.time())}
        assert (stats[first].pending, stats[first].running) == (8, 2)
        assert (stats[second].pending, stats[second].running, stats[second].succeeded) == (
            7,
            3,
            1,
        )
    finally:
        for client in clients[1:]:
            await client.close()
        await queue.close()


# -- explicit ids across queues -------------------------------------------------------------------


async def _an_id_moves_to_another_queue_only_once_gone(url: str) -> None:
    """An explicit id known on one queue is left alone on another; once its result expired
    there it is stored on the other queue, and purging the old result keeps the new index
    entry."""
    backend = RedisBackend.from_url(url)
    queue = TaskQueue(backend, result_ttl=1.0)
    await queue.connect()
    fresh = RedisBackend.from_url(url)  # remembers no ids: reads the index
    await fresh.connect()
    try:

        def on(name: str) -> Any:
            return queue.options(task_id="order-7", queue=name)

        assert await on("qa").enqueue(tasks.add, 1, 1) == "order-7"
        assert await on("qb").enqueue(tasks.add, 2, 2) == "order-7"
        snap = await fresh.get_task("order-7")
        assert snap is not None and snap.queue == "qa"
        async with AsyncWorker(backend, queues=["qa", "qb"], poll_interval=0.2):
            assert await queue.get_value("order-7", timeout=20) == 2
        await wait_until(lambda: _gone(queue, "order-7"), message="the result to expire")
        await on("qb").enqueue(tasks.add, 2, 2)
        assert await backend.purge_expired(time.time()) == 1
        snap = await fresh.get_task("order-7")
        assert snap is not None and (snap.queue, snap.status) == ("qb", TaskStatus.PENDING)
        assert await TaskQueue(fresh).cancel("order-7") is True
        # qa's expired result is gone; qb holds the one task, cancelled.
        assert await queue.stats() == [QueueStats("qb", cancelled=1)]
    finally:
        await fresh.close()
        await queue.close()


async def test_an_explicit_id_moves_to_another_queue_only_once_gone(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    await _an_id_moves_to_another_queue_only_once_gone(
        f"redis://127.0.0.1:{server.port}/0?prefix=moves"
    )


async def test_an_explicit_id_moves_to_another_queue_only_once_gone_on_a_redis_cluster(
    cluster_url: str,
) -> None:
    await _an_id_moves_to_another_queue_only_once_gone(cluster_url)


async def _gone(queue: TaskQueue, task_id: str) -> bool:
    return await queue.get_status(task_id) is None


async def _claim_index(backend: RedisBackend, task_id: str, queue: str) -> str:
    """Claim an id's index entry the way an enqueue on a cluster does first."""
    ((entry, _),) = await backend._wire.exec(
        [evalsha("claim_index", [backend._index.key(task_id)], [queue, "tok", ""])]
    )
    return bytes(entry).decode()


async def _late_enqueue(backend: RedisBackend, task: Any, kind: str) -> str:
    """The enqueue script of a client that claimed the entry as ``kind`` says."""
    commands: list[Any] = []
    backend._enqueue_calls([task], [0], commands, {0: kind})
    (reply,) = await backend._wire.exec(commands)
    return bytes(reply).decode()


async def test_a_takeover_on_a_redis_cluster_fences_the_claim_it_replaced(
    cluster_url: str,
) -> None:
    """A client that claimed an id's index entry and stalled before storing the task does not
    hold the id forever, and cannot store it after another queue took it over."""
    backend = RedisBackend.from_url(cluster_url)
    queue = TaskQueue(backend)
    await queue.connect()
    try:
        entry = await _claim_index(backend, "order-9", "qa")
        queue_name, token, claimed = entry.split(" ")
        assert (queue_name, token) == ("qa", "tok")
        # Another client stores the id on qb: the claim on qa is fenced, the entry moves.
        assert await queue.options(task_id="order-9", queue="qb").enqueue(tasks.add, 1, 2)
        snap = await backend.get_task("order-9")
        assert snap is not None and (snap.queue, snap.status) == ("qb", TaskStatus.PENDING)
        # The stalled client's enqueue on qa is refused, and so is one whose claim is too old.
        late = queue._build(
            queue.task_options.merge(task_id="order-9", queue="qa"),
            tasks.add,
            (3, 4),
            {},
            None,
            time.time(),
        )
        assert await _late_enqueue(backend, late, f"{claimed} tok") == "F"
        assert await _late_enqueue(backend, late, f"{int(claimed) - 61_000} other") == "S"
        stats = {s.queue: s.pending for s in await queue.stats()}
        assert stats == {"qb": 1}
        # Enqueued again on qa while known on qb: left alone.
        await queue.options(task_id="order-9", queue="qa").enqueue(tasks.add, 5, 6)
        assert {s.queue: s.pending for s in await queue.stats()} == {"qb": 1}
    finally:
        await queue.close()


# -- connections ----------------------------------------------------------------------------------


async def test_calls_beyond_max_connections_wait_for_one(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    admin = server.admin()
    url = f"redis://127.0.0.1:{server.port}/0?prefix=conns"
    queue = TaskQueue(f"{url}&max_connections=3&client_name=bounded")
    await queue.connect()
    try:
        assert isinstance(queue.backend, RedisBackend) and queue.backend.max_connections == 3
        ids = await asyncio.gather(*(queue.enqueue(tasks.add, i, i) for i in range(500)))
        statuses = await asyncio.gather(*(queue.get_status(i) for i in ids))
        assert statuses == [TaskStatus.PENDING] * 500
        async with AsyncWorker(url, poll_interval=0.2):
            values = await asyncio.gather(*(queue.get_value(i, timeout=30) for i in ids))
        assert values == [2 * i for i in range(500)]
        listing = await admin.execute_command("CLIENT", "LIST")
        kinds = Counter(
            "normal" if b" sub=0 " in line else "pubsub"
            for line in listing.splitlines()
            if b" name=bounded " in line
        )
        # Three connections for calls, one for pub/sub.
        assert kinds["normal"] == 3 and kinds["pubsub"] == 1, kinds
    finally:
        await queue.close()
        await admin.aclose()


# -- tasks stored by the version before the operating steps ---------------------------------------


async def _as_stored_before(admin: Any, backend: RedisBackend, task_id: str, queue: str) -> None:
    """Turn a task stored by this version into what the previous version stored: no function,
    no progress, no listing index entries, no rank while scheduled, no payload once
    finished."""
    k = backend._queue_keys(queue)
    key = k.task + task_id
    status, rank = await admin.hmget(key, "st", "rk")
    await admin.hdel(key, "fn")
    if status == b"0" and await admin.zscore(k.sched, task_id) is not None:
        await admin.hdel(key, "rk")
        await admin.zrem(k.sl, rank)
    if status == b"0" and rank is not None:
        await admin.zrem(k.pk, rank)  # a parked task keeps its rank, in `ck:w:<key>` only
    await admin.zrem(k.run, task_id)
    if status in (b"2", b"3", b"4"):
        await admin.hdel(key, "pl")
        for fin in (k.fin_s, k.fin_f, k.fin_c):
            await admin.zrem(fin, task_id)


async def _stored(admin: Any, backend: RedisBackend, queues: tuple[str, ...]) -> list[Any]:
    """Every set, counter and task hash of the queues, to compare two moments."""
    out: list[Any] = []
    for queue in queues:
        k = backend._queue_keys(queue)
        sets = (k.ready, k.sched, k.leases, k.done_s, k.done_f, k.done_c, k.sl, k.pk, k.run)
        for key in (*sets, k.fin_s, k.fin_f, k.fin_c):
            out.append(await admin.zrange(key, 0, -1, withscores=True))
        out.append(await admin.get(k.seq))
        for raw in await admin.zrange(k.done_s, 0, -1) + await admin.zrange(k.leases, 0, -1):
            out.append(await admin.hgetall(k.task + raw.decode()))
    return out


async def _old_tasks_are_listed_after_connect(url: str, admin: Any, prefix: str) -> None:
    """Store a task in each state the way the previous version did, with no format version,
    then connect clients of this version: one of them migrates the store, after which each
    task is listed in its state; a second migration changes nothing; the tasks run."""
    first, second = _queues_on_different_nodes(prefix)
    queue = TaskQueue(url, queue=first)
    await queue.connect()
    backend = queue.backend
    assert isinstance(backend, RedisBackend)
    format_key = f"{prefix}:{{{prefix}:queues}}:format"
    assert await admin.get(format_key) == b"2"  # a new store starts in this version's format
    clients: list[TaskQueue] = []
    try:
        failed = await queue.enqueue(tasks.fail, "old")
        succeeded = await queue.enqueue(tasks.add, 5, 5)
        running = await queue.enqueue(tasks.add, 0, 0)
        claims = await backend.claim([first], 3, "old-worker", 30)
        assert {c.task_id for c in claims} == {failed, succeeded, running}
        by_id = {c.task_id: c for c in claims}
        now = time.time()
        assert await backend.settle(
            [
                Finish(
                    by_id[failed].ref,
                    TaskStatus.FAILED,
                    None,
                    "ValueError: old",
                    None,
                    now,
                    now + 3600,
                ),
                _settled(by_id[succeeded]),
            ]
        ) == [True, True]
        keyed = queue.options(queue=second, concurrency_key="k", concurrency_limit=1)
        holding = await keyed.enqueue(tasks.add, 1, 1)
        parked = await keyed.enqueue(tasks.add, 2, 2)
        (held,) = await backend.claim([second], 2, "old-worker", 30)
        assert held.task_id == holding  # and `parked` is parked: its key is full
        assert await admin.zcard(backend._queue_keys(second).ck + ":w:k") == 1
        cancelled = await queue.enqueue(tasks.add, 3, 3)
        assert await queue.cancel(cancelled) is True
        due = await queue.enqueue(tasks.add, 1, 2)
        scheduled = await queue.enqueue_in(1.0, tasks.add, 3, 4)
        old = {
            first: (failed, succeeded, running, cancelled, due, scheduled),
            second: (holding, parked),
        }
        for name, ids in old.items():
            for task_id in ids:
                await _as_stored_before(admin, backend, task_id, name)
        await admin.delete(format_key)
        assert (await queue.list_tasks(status="failed")).tasks == []  # not migrated yet

        # Clients connecting at once: one migrates, the others wait for it.
        clients = [TaskQueue(url) for _ in range(3)]
        await asyncio.gather(*(c.connect() for c in clients))
        migrated = [c.backend.migrated for c in clients if isinstance(c.backend, RedisBackend)]
        assert sorted(migrated, key=str) == [7, None, None], migrated  # 3 fin, 2 run, sl, pk
        assert await admin.get(format_key) == b"2"
        reader = clients[0]
        expected = {
            "pending": {due, scheduled, parked},
            "running": {running, holding},
            "failed": {failed},
            "success": {succeeded},
            "cancelled": {cancelled},
        }
        for status, ids in expected.items():
            page = await reader.list_tasks(status=status)
            assert {i.task_id for i in page.tasks} == ids, status
            assert all(i.function == "" for i in page.tasks)
        (run_row,) = [
            i for i in (await reader.list_tasks(status="running")).tasks if i.task_id == running
        ]
        assert run_row.worker_id == "old-worker"
        # No migration state is left behind, and a store up to date is not migrated again.
        for name in old:
            assert await admin.exists(backend._queue_keys(name).migration) == 0
        later = TaskQueue(url)
        clients.append(later)
        await later.connect()
        assert isinstance(later.backend, RedisBackend) and later.backend.migrated is None

        # Migrating again (the format key lost) finds everything indexed: nothing changes.
        before = await _stored(admin, backend, tuple(old))
        await admin.delete(format_key)
        again = TaskQueue(url)
        clients.append(again)
        await again.connect()
        assert isinstance(again.backend, RedisBackend) and again.backend.migrated == 0
        assert await _stored(admin, backend, tuple(old)) == before

        # The previous version dropped a failed task's payload: it cannot run again.
        assert await queue.requeue(failed) is False
        assert await backend.settle([_settled(by_id[running]), _settled(held)]) == [True, True]
        # The pending tasks run (the scheduled one once due, the parked one once let out).
        async with AsyncWorker(backend, queues=(first, second), poll_interval=0.1):
            assert await queue.get_value(due, timeout=30) == 3
            assert await queue.get_value(scheduled, timeout=30) == 7
            assert await queue.get_value(parked, timeout=30) == 4
        done = await queue.list_tasks(status="success")
        assert {i.task_id for i in done.tasks} == {
            due,
            scheduled,
            parked,
            running,
            holding,
            succeeded,
        }
        assert (await queue.list_tasks(status="pending")).tasks == []
        assert await queue.purge(first, "failed") == 1
        assert await queue.get_task(failed) is None
    finally:
        for client in clients:
            await client.close()
        await queue.close()
        await admin.aclose()


async def test_tasks_stored_before_the_listing_indexes_are_listed_after_connect(
    servers: list[RedisProcess], tmp_path: Path
) -> None:
    server = await _start(servers, tmp_path / "redis")
    url = f"redis://127.0.0.1:{server.port}/0?prefix=old"
    await _old_tasks_are_listed_after_connect(url, server.admin(), "old")


async def test_tasks_stored_before_the_listing_indexes_are_listed_after_connect_on_a_cluster(
    cluster_url: str, redis_cluster: RedisCluster
) -> None:
    from redis.asyncio.cluster import RedisCluster as ClusterClient

    admin = ClusterClient(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    await _old_tasks_are_listed_after_connect(
        cluster_url, admin, cluster_url.rsplit("prefix=", 1)[1]
    )
