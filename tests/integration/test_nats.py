"""NATS-only behaviour: a server restart under a working worker, a 3-node JetStream cluster with
replicated streams, URLs, odd task ids, connection errors, and many workers starting at once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sitq import (
    AsyncWorker,
    BackendError,
    FixedBackoff,
    Result,
    RetryPolicy,
    TaskQueue,
    TaskStatus,
    backend_from_url,
)
from sitq.backends.nats import NATSBackend
from sitq.backends.nats._records import expiry_class
from sitq.models import Claim, Finish, LeaseState
from sitq.options import TaskOptions
from tests import services
from tests.backend_nats import delete_nats_stream, unique_stream
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, wait_until
from tests.servers import NatsCluster, NatsServers, free_port, jetstream_ready, nats_server

services.require_module("nats")


async def slow_record_item(log_dir: str, label: str, item: int, seconds: float) -> int:
    """``tasks.record_item`` after a pause, so that tasks are in flight when the server goes."""
    await asyncio.sleep(seconds)
    return tasks.record_item(log_dir, label, item)


@pytest.fixture
def nats_servers(tmp_path: Path) -> Iterator[NatsServers]:
    servers = NatsServers(nats_server(), tmp_path)
    yield servers
    servers.kill_all()


# -- a server restart -------------------------------------------------------------------------


async def test_worker_keeps_going_across_a_server_restart(
    nats_servers: NatsServers, worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    """The server is killed and started again on the same store while a worker process runs
    tasks: every task ends with exactly one result, and the worker keeps going."""
    port = free_port()
    store = tmp_path / "store"
    nats_servers.start(
        "n1", ["-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(port), "-n", "restart"]
    )
    server_url = f"nats://127.0.0.1:{port}"
    await wait_until(lambda: jetstream_ready(server_url), message="JetStream to start")
    url = f"{server_url}?stream={unique_stream()}"
    total = 240
    async with TaskQueue(url) as queue:
        worker = worker_processes.start(
            url, concurrency=8, lease=10.0, extra=("--import", "tests.integration.test_nats")
        )
        ids = await queue.enqueue_many(
            [(slow_record_item, (str(tmp_path), "restart", i, 0.03)) for i in range(total)]
        )
        log = tmp_path / "restart.log"

        def executed() -> int:
            return len(log.read_text().splitlines()) if log.exists() else 0

        await wait_until(lambda: executed() >= 40, timeout=30, message="40 tasks to run")
        nats_servers.restart("n1")
        during = executed()
        # The client and the worker both reconnect; the worker finishes what it held.
        await wait_until(lambda: jetstream_ready(server_url), message="JetStream to restart")
        results = {}
        for task_id in ids:
            results[task_id] = await _result_despite_reconnect(queue, task_id)
        assert worker.poll() is None, worker_processes.output(worker)
        stats = {s.queue: s for s in await queue.stats()}["default"]
    assert all(r.status == TaskStatus.SUCCESS for r in results.values())
    assert [queue.serializer.loads(results[i].value or b"") for i in ids] == list(range(total))
    assert (stats.succeeded, stats.pending, stats.running) == (total, 0, 0)
    runs = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert set(runs) == set(range(total)), "every task ran"
    again = {item: n for item, n in runs.items() if n > 1}
    print(
        f"\n{total} tasks, {sum(runs.values())} executions, {during} done when the server went "
        f"down; ran more than once (outcome not stored at the restart): {again or 'none'}"
    )
    # At-least-once: a task may run again only if its outcome was not stored when the server
    # went down, so at most the tasks in flight then (the worker's concurrency).
    assert len(again) <= 8


async def _result_despite_reconnect(queue: TaskQueue, task_id: str) -> Result:
    """The task's result, waited for (push-based) while the client may still be reconnecting."""
    found: list[Result] = []

    async def finished() -> bool:
        try:
            result = await queue.get_result(task_id, timeout=5)
        except BackendError:
            return False  # the connection is being re-established
        if result is not None:
            found.append(result)
        return result is not None

    await wait_until(finished, timeout=60, message=f"the result of task {task_id}")
    return found[0]


# -- a 3-node cluster -------------------------------------------------------------------------


@pytest.fixture
def nats_cluster(nats_cluster_servers: NatsCluster) -> list[str]:
    """The client URLs of the session's 3-node JetStream cluster."""
    return nats_cluster_servers.urls


def _cluster_url(urls: list[str], first: int = 0) -> str:
    ordered = urls[first:] + urls[:first]
    others = "&".join(f"server={u}" for u in ordered[1:])
    return f"{ordered[0]}?{others}&stream={unique_stream()}&replicas=3"


@pytest.fixture
async def cluster_queue(nats_cluster: list[str]) -> AsyncIterator[TaskQueue]:
    url = _cluster_url(nats_cluster)
    queue = TaskQueue(url)
    await queue.connect()
    yield queue
    await queue.close()


async def test_cluster_streams_are_replicated(cluster_queue: TaskQueue) -> None:
    import nats

    backend = cluster_queue.backend
    assert isinstance(backend, NATSBackend)
    nc = await nats.connect(backend.servers[0])
    try:
        for name in (backend.stream, f"KV_{backend.stream}"):
            reply = await nc.request(f"$JS.API.STREAM.INFO.{name}", b"", timeout=5)
            info = json.loads(reply.data)
            assert info["config"]["num_replicas"] == 3
            assert len(info["cluster"].get("replicas", [])) == 2, info["cluster"]
    finally:
        await nc.close()


async def test_cluster_enqueue_and_result(cluster_queue: TaskQueue) -> None:
    task_id = await cluster_queue.enqueue(tasks.add, 2, 3)
    assert await cluster_queue.get_status(task_id) == TaskStatus.PENDING
    async with AsyncWorker(cluster_queue.backend, poll_interval=0.2):
        assert await cluster_queue.get_value(task_id, timeout=20) == 5
    result = await cluster_queue.get_result(task_id)
    assert result is not None and result.attempts == 1


async def test_cluster_worker_process_drains_two_queues(
    nats_cluster: list[str], worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    """A worker process on another node of the cluster drains two queues."""
    url = _cluster_url(nats_cluster)
    worker_url = url.replace(nats_cluster[0], nats_cluster[1], 1).replace(
        f"server={nats_cluster[1]}", f"server={nats_cluster[0]}", 1
    )
    async with TaskQueue(url) as queue:
        default = await queue.enqueue_many(
            [(tasks.record_item, (str(tmp_path), "two", i)) for i in range(60)]
        )
        emails = await queue.options(queue="emails").enqueue_many(
            [(tasks.record_item, (str(tmp_path), "two", 100 + i)) for i in range(60)]
        )
        worker_processes.start(worker_url, concurrency=4, queues=("default", "emails"))
        values = [await queue.get_value(i, timeout=30) for i in default + emails]
        stats = {s.queue: s for s in await queue.stats()}
    assert values == list(range(60)) + [100 + i for i in range(60)]
    assert stats["default"].succeeded == stats["emails"].succeeded == 60
    lines = (tmp_path / "two.log").read_text().split()
    assert Counter(int(x) for x in lines[0::2]) == Counter(values), "each ran exactly once"


async def test_cluster_retries(cluster_queue: TaskQueue, tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.05))
    task_id = await cluster_queue.options(retry=policy).enqueue(tasks.flaky, str(tmp_path), "f", 2)
    async with AsyncWorker(cluster_queue.backend, poll_interval=0.2):
        result = await cluster_queue.get_result(task_id, timeout=20)
    assert result is not None and result.status == TaskStatus.SUCCESS and result.attempts == 3


async def test_cluster_cancellation(cluster_queue: TaskQueue) -> None:
    pending = await cluster_queue.enqueue_in(60, tasks.add, 1, 1)
    assert await cluster_queue.cancel(pending) is True
    result = await cluster_queue.get_result(pending)
    assert result is not None and result.status == TaskStatus.CANCELLED
    running = await cluster_queue.enqueue(tasks.sleep_async, 60)
    # Cancellation reaches the worker at its next heartbeat (every lease / 3 = 2 s).
    async with AsyncWorker(cluster_queue.backend, lease=6.0, poll_interval=0.2):
        await wait_until(
            lambda: _status_is(cluster_queue, running, TaskStatus.RUNNING), message="running"
        )
        assert await cluster_queue.cancel(running) is True
        result = await cluster_queue.get_result(running, timeout=20)
    assert result is not None and result.status == TaskStatus.CANCELLED


async def test_cluster_priorities(cluster_queue: TaskQueue, tmp_path: Path) -> None:
    labels = []
    for i, priority in enumerate([0, 5, 0, 9, 5, 0]):
        labels.append((priority, i, f"p{priority}-{i}"))
        await cluster_queue.options(priority=priority).enqueue(
            tasks.record, str(tmp_path), f"p{priority}-{i}"
        )
    async with AsyncWorker(cluster_queue.backend, concurrency=1, poll_interval=0.2):
        await wait_until(lambda: all(tasks.executions(tmp_path, lb) for _, _, lb in labels))
    starts = {lb: tasks.executions(tmp_path, lb)[0]["start"] for _, _, lb in labels}
    expected = [lb for _, _, lb in sorted(labels, key=lambda t: (-t[0], t[1]))]
    assert sorted(starts, key=lambda lb: starts[lb]) == expected


async def _status_is(queue: TaskQueue, task_id: str, status: TaskStatus) -> bool:
    return await queue.get_status(task_id) == status


# -- URLs, ids, errors, concurrent setup (on the shared test server) --------------------------


def test_url_options_and_several_servers() -> None:
    backend = backend_from_url(
        "nats://alice:s3cret@h1:4222?server=nats://bob:pw@h2:4223&stream=APP1&replicas=3"
        "&request_timeout=2"
    )
    assert isinstance(backend, NATSBackend)
    assert backend.servers == ["nats://alice:s3cret@h1:4222", "nats://bob:pw@h2:4223"]
    assert (backend.stream, backend.replicas, backend.request_timeout) == ("APP1", 3, 2.0)
    for secret in ("s3cret", "alice", "bob", "pw@"):
        assert secret not in backend.describe()
    repeated = NATSBackend.from_url("nats://h1:4222?server=h2:4222&server=tls://h3:4222")
    assert repeated.servers == ["nats://h1:4222", "nats://h2:4222", "tls://h3:4222"]
    # Comma-separated hosts: through backend_from_url, only the last may name a port (its
    # URL check reads the port after the first colon); a host without one uses 4222.
    commas = backend_from_url("nats://h1,h2,h3:4223")
    assert isinstance(commas, NATSBackend)
    assert commas.servers == ["nats://h1", "nats://h2", "nats://h3:4223"]
    assert NATSBackend.from_url("nats://h1:4222,h2:4223").servers == [
        "nats://h1:4222",
        "nats://h2:4223",
    ]
    with pytest.raises(Exception, match="unknown NATS URL option 'colour'"):
        NATSBackend.from_url("nats://h1:4222?colour=red")
    with pytest.raises(Exception, match="stream="):
        NATSBackend(stream="has.dot")
    with pytest.raises(Exception, match="replicas"):
        NATSBackend(replicas=0)


@pytest.fixture
async def nats_url() -> AsyncIterator[str]:
    url = services.nats_url()
    services.require("nats", url)
    stream = unique_stream()
    yield f"{url}?stream={stream}"
    await delete_nats_stream(url, stream)


async def test_ids_that_are_not_valid_keys(nats_url: str) -> None:
    odd = ["a.b", "x/y", "ünïcödé", "order:42", "*", ">", "a..b", "=abc", "a" * 255]
    async with TaskQueue(nats_url) as queue:
        for task_id in odd:
            assert await queue.options(task_id=task_id).enqueue(tasks.add, 1, len(task_id)) == (
                task_id
            )
        assert await queue.options(task_id="a.b").enqueue(tasks.add, 0, 0) == "a.b"
        async with AsyncWorker(queue.backend, poll_interval=0.2):
            for task_id in odd:
                assert await queue.get_value(task_id, timeout=10) == 1 + len(task_id)
        assert await queue.get_status("a_b") is None


async def test_connection_errors_are_backend_errors() -> None:
    port = free_port()
    backend = NATSBackend(f"nats://127.0.0.1:{port}", connect_timeout=1)
    with pytest.raises(BackendError, match=f"127.0.0.1:{port}"):
        await backend.connect()
    with pytest.raises(BackendError, match="not connected"):
        await backend.get_task("x")


async def test_lost_connection_is_a_backend_error_then_recovers(
    nats_servers: NatsServers, tmp_path: Path
) -> None:
    port = free_port()
    args = ["-js", "-sd", str(tmp_path / "s"), "-a", "127.0.0.1", "-p", str(port)]
    nats_servers.start("n1", args)
    server_url = f"nats://127.0.0.1:{port}"
    await wait_until(lambda: jetstream_ready(server_url), message="JetStream to start")
    async with TaskQueue(f"{server_url}?stream=LOST&request_timeout=2") as queue:
        task_id = await queue.enqueue(tasks.add, 1, 1)
        nats_servers.stop("n1")
        with pytest.raises(BackendError, match=r"(?i)connection|timed out"):
            await queue.get_status(task_id)
        nats_servers.start("n1", args)
        await wait_until(lambda: _reads(queue, task_id), timeout=30, message="a reconnect")
        async with AsyncWorker(queue.backend, poll_interval=0.2):
            assert await queue.get_value(task_id, timeout=10) == 2


async def _reads(queue: TaskQueue, task_id: str) -> bool:
    try:
        return await queue.get_status(task_id) == TaskStatus.PENDING
    except BackendError:
        return False


async def test_many_workers_connect_at_once(nats_url: str) -> None:
    backends = [NATSBackend.from_url(nats_url) for _ in range(10)]
    await asyncio.gather(*(b.connect() for b in backends))
    try:
        queue = TaskQueue(backends[0])
        task_ids = await queue.enqueue_many([(tasks.add, (i, i)) for i in range(20)])
        workers = [AsyncWorker(b, concurrency=2, poll_interval=0.2) for b in backends[1:]]
        await asyncio.gather(*(w.start() for w in workers))
        try:
            assert [await queue.get_value(t, timeout=20) for t in task_ids] == [
                2 * i for i in range(20)
            ]
        finally:
            await asyncio.gather(*(w.stop() for w in workers))
    finally:
        await asyncio.gather(*(b.close() for b in backends))


async def test_a_new_priority_reaches_a_running_worker_process(
    nats_url: str, worker_processes: WorkerProcesses
) -> None:
    """A worker learns of a priority first used after it started, without waiting a poll."""
    async with TaskQueue(nats_url) as queue:
        worker_processes.start(nats_url, concurrency=1)
        assert await queue.get_value(await queue.enqueue(tasks.add, 1, 1), timeout=20) == 2
        started = time.monotonic()
        task_id = await queue.options(priority=7).enqueue(tasks.add, 3, 4)
        assert await queue.get_value(task_id, timeout=20) == 7
        assert time.monotonic() - started < 5


def test_unique_stream_names_are_valid() -> None:
    name = unique_stream()
    assert NATSBackend(stream=name).stream == name
    assert len({unique_stream() for _ in range(100)}) == 100
    assert uuid.UUID(name[1:].lower())


# -- cron storage, locks and concurrency keys -------------------------------------------------


def _done(claim: Claim) -> Finish:
    now = time.time()
    ref = claim.ref
    return Finish(ref, TaskStatus.SUCCESS, None, None, None, now, now + 60)


async def _connected(url: str, count: int) -> list[NATSBackend]:
    backends = [NATSBackend.from_url(url) for _ in range(count)]
    await asyncio.gather(*(b.connect() for b in backends))
    return backends


async def test_keyed_claims_on_many_connections_never_exceed_the_limit(nats_url: str) -> None:
    """Six clients claim, heartbeat, settle and abandon keyed tasks at once; at no moment do
    more than the limit hold a claim, and every task ends once."""
    # Claims are extended every 0.1 s; a lease of 3 s is not lost to a stall of a loaded machine.
    limit, lease = 3, 3.0
    backends = await _connected(nats_url, 6)
    try:
        queue = TaskQueue(backends[0])
        keyed = queue.options(concurrency_key="tenant/7:é", concurrency_limit=limit)
        ids = await keyed.enqueue_many([(tasks.add, (i, i)) for i in range(30)])
        ids += [await keyed.enqueue(tasks.add, i, i) for i in range(10)]
        intervals: list[tuple[float, float]] = []
        finished: set[str] = set()
        abandoned = 0

        async def hold(backend: NATSBackend, claim: Claim, seconds: float) -> None:
            started = time.monotonic()
            ref = claim.ref
            while time.monotonic() - started < seconds:
                await asyncio.sleep(0.1)
                assert await backend.extend_lease([ref], lease) == [LeaseState.HELD]
            intervals.append((started, time.monotonic()))
            assert await backend.settle([_done(claim)]) == [True]
            finished.add(claim.task_id)

        async def client(index: int, backend: NATSBackend) -> None:
            nonlocal abandoned
            running: set[asyncio.Task[None]] = set()
            while len(finished) < len(ids):
                claims = await backend.claim(["default"], 2, f"w{index}", lease)
                for claim in claims:
                    if index == 0 and abandoned < 3:
                        abandoned += 1  # a lost worker: never extended nor settled
                        now = time.monotonic()
                        intervals.append((now, now + lease - 0.1))
                        continue
                    task = asyncio.create_task(hold(backend, claim, 0.05 + 0.1 * (len(ids) % 4)))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if not claims:
                    await backend.wait_for_work(["default"], 0.2)
            await asyncio.gather(*running)

        await asyncio.wait_for(asyncio.gather(*(client(i, b) for i, b in enumerate(backends))), 90)
        assert finished == set(ids)
        events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
        peak = running_now = 0
        for _, delta in events:
            running_now += delta
            peak = max(peak, running_now)
        assert peak <= limit
        for task_id in ids:
            assert await queue.get_status(task_id) == TaskStatus.SUCCESS
    finally:
        await asyncio.gather(*(b.close() for b in backends))


async def _put_slot_holder(backend: NATSBackend, key: str, holders: list[list[Any]]) -> None:
    """Write a slot record as a claimer that died between its two writes leaves it."""
    import nats

    nc = await nats.connect(backend.servers[0])
    try:
        subject = f"$KV.{backend.stream}._.ck.default.{key}"
        reply = await nc.request(subject, json.dumps({"h": holders}).encode(), timeout=5)
        assert "error" not in json.loads(reply.data)
    finally:
        await nc.close()


async def test_a_slot_whose_task_never_started_frees_at_its_lease_end(nats_url: str) -> None:
    (backend,) = await _connected(nats_url, 1)
    try:
        queue = TaskQueue(backend)
        task_id = await queue.options(concurrency_key="k", concurrency_limit=1).enqueue(
            tasks.add, 1, 1
        )
        lease_end = time.time() + 1.0
        await _put_slot_holder(backend, "k", [["ghost", 1, lease_end, "dead"]])
        assert await backend.claim(["default"], 5, "w", 30) == []
        claimed: list[Claim] = []

        async def freed() -> bool:
            claimed.extend(await backend.claim(["default"], 5, "w", 30))
            return bool(claimed)

        await wait_until(freed, timeout=15, message="the orphaned slot to free itself")
        assert time.time() >= lease_end - 0.05
        assert [c.task_id for c in claimed] == [task_id]
    finally:
        await backend.close()


async def test_a_keyed_claim_whose_slot_lapsed_is_lost(nats_url: str) -> None:
    """A frozen worker's slot goes to another task once its lease ends; the frozen worker's
    next heartbeat then finds its claim lost, even though nobody took its own task."""
    frozen, other = await _connected(nats_url, 2)
    try:
        keyed = TaskQueue(frozen).options(concurrency_key="k", concurrency_limit=1)
        first = await keyed.enqueue(tasks.add, 1, 1)
        (a,) = await frozen.claim(["default"], 1, "frozen", 0.3)
        assert a.task_id == first
        second = await keyed.enqueue(tasks.add, 2, 2)
        taken: list[Claim] = []

        async def slot_taken() -> bool:
            taken.extend(await other.claim(["default"], 1, "other", 30))
            return bool(taken)

        await wait_until(slot_taken, timeout=15, message="the lapsed slot to be taken")
        assert taken[0].task_id in (first, second)
        ref = a.ref
        assert await frozen.extend_lease([ref], 30) == [LeaseState.LOST]
        assert await frozen.settle([_done(a)]) == [taken[0].task_id != first]
        assert await other.settle([_done(taken[0])]) == [True]
    finally:
        await asyncio.gather(frozen.close(), other.close())


async def _deliveries(backend: NATSBackend, consumer: str) -> int:
    reply = await backend._client.api(f"CONSUMER.INFO.{backend.stream}.{consumer}", None)
    assert reply is not None
    return int(reply["delivered"]["consumer_seq"])


async def test_blocked_and_scheduled_tasks_are_not_busy_polled(nats_url: str) -> None:
    """An idle worker's loop beside a full key (20 tasks waiting on it) and a scheduled task:
    the plain task behind them runs at once, and the waiting ones come back only with a
    growing back-off."""
    holder, waiter = await _connected(nats_url, 2)
    try:
        keyed = TaskQueue(holder).options(concurrency_key="k", concurrency_limit=1)
        await keyed.enqueue(tasks.add, 0, 0)
        (running,) = await holder.claim(["default"], 1, "holder", 30)
        for i in range(1, 21):
            await keyed.enqueue(tasks.add, i, i)
        await TaskQueue(holder).enqueue_in(60, tasks.add, 0, 0)
        plain = await TaskQueue(waiter).enqueue(tasks.add, 5, 5)
        before = await _deliveries(waiter, "q_default_p0")
        claimed: list[Claim] = []
        loops = 0
        started = time.monotonic()
        while time.monotonic() - started < 3:
            loops += 1
            claimed += await waiter.claim(["default"], 1, "waiter", 30)
            await waiter.wait_for_work(["default"], 1.0)
        assert [c.task_id for c in claimed] == [plain], "the plain task is not held back"
        deliveries = await _deliveries(waiter, "q_default_p0") - before
        # Each blocked task comes back after 0.05, 0.1, 0.2, 0.4, 0.8 s, then every second
        # (about 7 times in 3 s); the scheduled one at its ETA.
        assert deliveries <= 20 * 10, deliveries
        assert loops <= 100, loops
        assert await holder.settle([_done(running)]) == [True]
    finally:
        await asyncio.gather(holder.close(), waiter.close())


async def test_a_freed_slot_wakes_the_client_holding_the_blocked_task(nats_url: str) -> None:
    """The blocked task was last seen by another client, which naked it for a second: the
    settle's notice brings it back there (how soon is a benchmark's concern, not a test's)."""
    holder, waiter = await _connected(nats_url, 2)
    try:
        keyed = TaskQueue(holder).options(concurrency_key="k", concurrency_limit=1)
        await keyed.enqueue(tasks.add, 0, 0)
        (running,) = await holder.claim(["default"], 1, "holder", 30)
        blocked = await keyed.enqueue(tasks.add, 1, 1)

        def parked_for_long() -> bool:
            ends = [until for p in waiter._consumers.parked.values() for _, until in p.values()]
            return bool(ends) and min(ends) - time.monotonic() > 0.7

        async def blocked_for_long() -> bool:
            assert await waiter.claim(["default"], 1, "waiter", 30) == []
            if parked_for_long():
                return True
            await waiter.wait_for_work(["default"], 1.0)
            return False

        await wait_until(blocked_for_long, timeout=20, message="a back-off of a second")
        assert await holder.settle([_done(running)]) == [True]
        # Only the settle's notice takes a message out of the waiter's parked set (when its
        # back-off ends instead, the stream redelivers it and the parked entry stays).
        await wait_until(
            lambda: not waiter._consumers.parked,
            timeout=10,
            message="the settle's notice to unpark it",
        )
        await waiter.wait_for_work(["default"], 5.0)
        (claim,) = await waiter.claim(["default"], 1, "waiter", 30)
        assert claim.task_id == blocked
    finally:
        await asyncio.gather(holder.close(), waiter.close())


async def test_cron_index_and_locks_under_concurrent_clients(nats_url: str) -> None:
    backends = await _connected(nats_url, 5)
    try:
        names = [f"job.{i}/é" for i in range(20)]
        await asyncio.gather(
            *(backends[i % 5].put_cron(n, n.encode(), 100.0 + i) for i, n in enumerate(names))
        )
        listed = await backends[0].list_crons()
        assert [r.name for r in listed] == sorted(names)
        assert {r.name: r.last_tick for r in listed} == {n: 100.0 + i for i, n in enumerate(names)}
        gone = await asyncio.gather(
            *(backends[i % 5].delete_cron(n) for i, n in enumerate(names[::2]))
        )
        assert all(gone)
        assert [r.name for r in await backends[1].list_crons()] == sorted(names[1::2])

        won = await asyncio.gather(
            *(b.acquire_lock("one", f"t{i}", 30) for i, b in enumerate(backends))
        )
        assert won.count(True) == 1
        owner = f"t{won.index(True)}"
        assert await backends[3].release_lock("one", owner) is True
        assert await backends[4].acquire_lock("one", "late", 30) is True
    finally:
        await asyncio.gather(*(b.close() for b in backends))


async def test_sitq_records_stay_apart_from_tasks(nats_url: str) -> None:
    """Cron, lock and slot records share the bucket with the tasks under keys no task id can
    have: tasks with look-alike ids, stats and expiry are not disturbed."""
    async with TaskQueue(nats_url) as queue:
        backend = queue.backend
        await backend.put_cron("c", b"d", 1.0)
        assert await backend.acquire_lock("l", "t", 30)
        keyed = queue.options(concurrency_key="k", concurrency_limit=1)
        await keyed.enqueue(tasks.add, 1, 1)
        look_alikes = ["_.crons", "_.cron.c", "_.lock.l", "_.ck.default.k"]
        for task_id in look_alikes:
            await queue.options(task_id=task_id).enqueue(tasks.add, 2, 2)
        (stats,) = await queue.stats()
        assert (stats.queue, stats.pending) == ("default", 5)
        async with AsyncWorker(backend, poll_interval=0.2):
            for task_id in look_alikes:
                assert await queue.get_value(task_id, timeout=10) == 4
        assert [r.name for r in await backend.list_crons()] == ["c"]
        assert await backend.acquire_lock("l", "other", 30) is False
        assert await backend.purge_expired(time.time() + 10**6) == 0


async def test_cluster_cron_locks_and_keys(cluster_queue: TaskQueue) -> None:
    """The same steps through the stream leader (no direct gets with three replicas)."""
    backend = cluster_queue.backend
    await backend.put_cron("c", b"d", 10.0)
    assert await backend.advance_cron("c", 10.0, 20.0)
    assert [(r.name, r.last_tick) for r in await backend.list_crons()] == [("c", 20.0)]
    assert await backend.delete_cron("c")
    assert await backend.acquire_lock("l", "t1", 0.5)
    assert not await backend.acquire_lock("l", "t2", 30)
    await wait_until(lambda: backend.acquire_lock("l", "t2", 30), message="the lock's TTL")
    keyed = cluster_queue.options(concurrency_key="k", concurrency_limit=1)
    for i in range(2):
        await keyed.enqueue(tasks.add, i, i)
    (first,) = await backend.claim(["default"], 5, "w", 30)
    assert await backend.claim(["default"], 5, "w", 30) == []
    assert await backend.settle([_done(first)]) == [True]
    assert len(await backend.claim(["default"], 5, "w", 30)) == 1


# -- a store written before the listing index -------------------------------------------------


class _OldStore:
    """Writes records, work messages and expiry entries as sitq's NATS backend did before the
    listing index (format 1): no listing entry, no ``fn``/``hp``/``lt``/``ix`` fields, and no
    payload kept in a pending record."""

    def __init__(self, nc: Any, stream: str, queue: TaskQueue) -> None:
        self.nc = nc
        self.stream = stream
        self.serializer = queue.serializer
        self.options = TaskOptions().engine_options()
        self.now = time.time()
        self.ids: dict[str, list[str]] = {}

    async def _publish(self, subject: str, data: bytes) -> int:
        reply = json.loads((await self.nc.request(subject, data, timeout=5)).data)
        assert "error" not in reply, reply
        return int(reply["seq"])

    async def add(
        self,
        label: str,
        state: str,
        *,
        priority: int = 0,
        eta: float | None = None,
        fields: dict[str, Any] | None = None,
        tail: bytes | None = None,
        message: bool = False,
        x: int = 0,
    ) -> str:
        """Store one task of ``state`` (and its work message, as enqueue published it)."""
        task_id = f"old-{label}"
        rec: dict[str, Any] = {
            "s": state,
            "id": task_id,
            "q": "default",
            "p": priority,
            "g": "oldgen" + label,
            "eta": self.now if eta is None else eta,
            "enq": self.now,
            "ttl": 3600.0,
            "a": 0,
            "r": 0,
            "f": 0,
            **(fields or {}),
        }
        head = json.dumps(rec, separators=(",", ":")).encode()
        data = head if tail is None else head + b"\n" + tail
        rev = await self._publish(f"$KV.{self.stream}.{task_id}", data)
        if message:
            first = {**rec, "s": "pending", "a": 0, "f": 0}
            for field in ("lu", "w", "st"):
                first.pop(field, None)
            body = json.dumps({**first, "o": self.options, "rev": rev}, separators=(",", ":"))
            payload = self.serializer.dumps_call(tasks.add, (x, x), {})
            await self._publish(
                f"sitq.{self.stream}.q.default.{priority}", body.encode() + b"\n" + payload
            )
        if state in ("success", "failed", "cancelled"):
            entry = [task_id, rev, rec["exp"]]
            ttl_class = expiry_class(rec["ttl"])
            body = json.dumps({"exp": rec["exp"], "keys": [entry]}).encode()
            await self._publish(f"sitq.{self.stream}.x.{ttl_class}", body)
        self.ids.setdefault(state, []).append(task_id)
        return task_id


async def _listed(queue: TaskQueue, status: str) -> list[str]:
    """Every task id of ``status``, page by page."""
    ids: list[str] = []
    cursor = None
    while True:
        page = await queue.list_tasks(status, limit=2, cursor=cursor)
        ids += [t.task_id for t in page.tasks]
        cursor = page.next_cursor
        if cursor is None:
            return ids


async def _index_size(nc: Any, stream: str) -> int:
    reply = await nc.request(f"$JS.API.STREAM.INFO.IX_{stream}", b"", timeout=5)
    return int(json.loads(reply.data)["state"]["messages"])


async def test_a_store_of_the_previous_version_is_listed_after_connect(nats_url: str) -> None:
    """Tasks stored in every state without listing entries (the format before the listing
    index) are listed once clients connect (three at once), in their states, in order; a second
    connect changes nothing; the pending ones still run, and migrated results still expire."""
    import nats

    stream = nats_url.rsplit("=", 1)[1]
    async with TaskQueue(nats_url) as first:  # creates the streams (and marks the format)
        pass
    nc = await nats.connect(nats_url.split("?")[0])
    try:
        old = _OldStore(nc, stream, first)
        now = old.now
        await old.add("due1", "pending", message=True, x=1)
        await old.add("due2", "pending", message=True, x=2)
        await old.add("urgent", "pending", priority=5, message=True, x=3)
        await old.add("later", "pending", eta=now + 3600, message=True, x=4)
        running = {"a": 1, "f": 7, "lu": now + 600, "w": "old-worker", "st": now}
        await old.add("running", "running", fields=running, message=True, x=5)
        done = {"a": 1, "f": 9, "st": now, "fin": now, "e": None, "tb": None}
        value = old.serializer.dumps(42)
        await old.add(
            "success", "success", fields={**done, "exp": now + 3600, "hv": True}, tail=value
        )
        await old.add(
            "failed", "failed", fields={**done, "exp": now + 3600, "e": "boom", "tb": "Traceback"}
        )
        await old.add(
            "cancelled",
            "cancelled",
            fields={"fin": now, "exp": now + 3600, "e": "cancelled before it started", "tb": None},
        )
        await old.add(
            "short", "success", fields={**done, "ttl": 8.0, "exp": now + 8, "hv": True}, tail=value
        )
        await nc.request(
            f"$JS.API.STREAM.PURGE.KV_{stream}",
            json.dumps({"filter": f"$KV.{stream}._.format"}).encode(),
            timeout=5,
        )
        assert await _index_size(nc, stream) == 0

        backends = await _connected(nats_url, 3)  # several clients migrate at once
        try:
            queue = TaskQueue(backends[0])
            assert await _listed(queue, "pending") == [
                "old-urgent",
                "old-due1",
                "old-due2",
                "old-later",
            ]
            assert await _listed(queue, "running") == ["old-running"]
            assert set(await _listed(queue, "success")) == {"old-success", "old-short"}
            assert await _listed(queue, "failed") == ["old-failed"]
            assert await _listed(queue, "cancelled") == ["old-cancelled"]
            assert await _index_size(nc, stream) == 9  # one entry each, none left by a race
            assert await queue.get_value("old-success") == 42
            # Their payload was not kept before the upgrade: requeue refuses them.
            assert await queue.requeue("old-failed") is False
            assert await queue.requeue("old-cancelled") is False
        finally:
            await asyncio.gather(*(b.close() for b in backends))

        async with TaskQueue(nats_url) as again:  # the format is marked: nothing to do
            assert await again.backend._migrator.migrate() == 0
            assert await _index_size(nc, stream) == 9
            assert await _listed(again, "pending") == [
                "old-urgent",
                "old-due1",
                "old-due2",
                "old-later",
            ]
            async with AsyncWorker(again.backend, poll_interval=0.2):
                for task_id, x in (("old-urgent", 3), ("old-due1", 1), ("old-due2", 2)):
                    assert await again.get_value(task_id, timeout=15) == 2 * x
            assert await _listed(again, "pending") == ["old-later"]
            assert await _listed(again, "running") == ["old-running"]
            succeeded = await _listed(again, "success")
            assert {"old-urgent", "old-due1", "old-due2", "old-success"} <= set(succeeded)

            purged = 0

            async def short_purged() -> bool:
                nonlocal purged
                purged += await again.backend.purge_expired(time.time())
                return purged >= 1

            await wait_until(short_purged, timeout=30, message="the migrated result to expire")
            assert await again.get_status("old-short") is None
            assert await again.get_status("old-success") == TaskStatus.SUCCESS
    finally:
        await nc.close()


class _RecordWritesHeld:
    """The enqueuing client of a backend, with its second ``many`` call (an explicit id's
    record writes, after its listing entry and work message went out) held until released."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._calls = 0
        self.reached = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def many(self, requests: Any) -> Any:
        batch = list(requests)
        self._calls += 1
        if self._calls == 2:
            self.reached.set()
            await self.release.wait()
        return await self._client.many(batch)


async def test_an_expired_id_enqueued_again_runs_when_its_message_beats_its_record(
    nats_url: str,
) -> None:
    """Enqueueing an explicit id whose result expired publishes the new work message before
    the new record replaces the old one. A worker that gets the message in between must wait
    for the record, not drop the message as an older life's: else the task never runs."""
    client_backend, worker_backend = await _connected(nats_url, 2)
    try:
        queue = TaskQueue(client_backend)
        task_id = await queue.options(task_id="again").enqueue(tasks.add, 1, 1)
        (claim,) = await worker_backend.claim(["default"], 1, "w", 30)
        now = time.time()
        done = Finish(
            claim.ref, TaskStatus.SUCCESS, queue.serializer.dumps(2), None, None, now, now
        )
        assert await worker_backend.settle([done]) == [True]
        enqueuer = client_backend._enqueuer
        held = _RecordWritesHeld(enqueuer._client)
        enqueuer._client = held
        again = asyncio.ensure_future(queue.options(task_id="again").enqueue(tasks.add, 2, 3))
        await asyncio.wait_for(held.reached.wait(), 10)
        # The message of the new life is out; the record is still the old, expired one.
        assert await worker_backend.claim(["default"], 1, "w", 30) == []
        held.release.set()
        assert await again == task_id
        claimed: list[Claim] = []

        async def claimed_again() -> bool:
            claimed.extend(await worker_backend.claim(["default"], 1, "w", 30))
            return bool(claimed)

        await wait_until(claimed_again, timeout=10, message="the task enqueued again to run")
        assert queue.serializer.loads_call(claimed[0].payload)[1] == (2, 3)
    finally:
        await client_backend.close()
        await worker_backend.close()
