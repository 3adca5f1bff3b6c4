"""Push wake-ups (docs/contract.md, Results and state: waiting is push-based where the backend can
push; No busy waiting): an idle worker is woken by a new task, and a ``get_result`` waiter by the
task's finish, through the backend's push channel: LISTEN/NOTIFY on PostgreSQL, pub/sub on Redis,
the long-polling pull request and the key-value watch on NATS, inotify on SQLite, and within the
process on the memory backend.

Every backend also polls now and then, to cover a push it missed, and a test that waits long
enough passes on the polls alone. Here the worker's poll interval is 30 s and the backend's
fallback re-reads are spaced out to 30 s as well (``slow_fallback``), so that only a push wakes
the worker and the waiter within the deadlines below. The second test first cuts the push
connection (Redis: ``CLIENT KILL`` of the pub/sub connection, on a server of the test's own;
PostgreSQL: ``pg_terminate_backend`` of the listening connection; NATS: every connection reset
by a TCP proxy) and checks the same once the backend has reconnected by itself. SQLite and the
memory backend have no connection to cut.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

import pytest

from sitq import AsyncWorker, TaskQueue, TaskStatus
from sitq.backends import backend_from_url
from sitq.models import ClaimRef, Finish
from tests.conformance import tasks
from tests.conformance.backend_calls import CallLog, slow_fallback
from tests.conftest import FACTORIES, BackendFactory, wait_until
from tests.servers import OwnRedis, TcpProxy
from tests.services import postgres_dsn

#: The worker's poll interval and the backends' fallback re-read interval: far longer than the
#: deadlines, so that only a push meets them.
POLL = 30.0
#: Seconds within which an idle worker must have run a task enqueued while it waits.
WORK_DEADLINE = 10.0
#: Seconds within which a result waiter must have returned once the task is finished. The test
#: finishes the task right after a re-read of the waiter that came ``GAP`` seconds or more after
#: the one before, or once the waiter has not read for ``QUIET`` seconds: a waiter's fallback
#: re-reads only ever grow further apart, so its next one is ``GAP`` seconds away at least.
#: ``QUIET`` is longer than any re-read interval shorter than ``GAP`` (SQLite's and NATS's grow
#: by doubling), so it only ends the wait of a waiter whose re-reads are far apart already.
RESULT_DEADLINE = 0.9
GAP = 1.0
QUIET = 1.5
#: The queue of the tasks whose results are waited for (the worker does not serve it).
RESULTS = "results"


async def worker_is_idle(log: CallLog, since: float = 0.0) -> None:
    """Wait until the worker is waiting for work after a claim that succeeded and began after
    ``since``."""

    def idle() -> bool:
        claimed = [c.began for c in log.calls if c.name == "claim" and c.ok and c.began >= since]
        return bool(claimed) and any(
            c.name == "wait_for_work" and c.ended is None and c.began >= claimed[-1]
            for c in log.calls
        )

    await wait_until(idle, timeout=30, message="the worker to claim, then wait for work")


async def an_idle_worker_is_woken(queue: TaskQueue, log: CallLog) -> None:
    """A task enqueued while the worker waits for work runs well within its poll interval."""
    await worker_is_idle(log)
    task_id = await queue.enqueue(tasks.add, 20, 22)

    async def done() -> bool:
        return await queue.get_status(task_id) == TaskStatus.SUCCESS

    await wait_until(
        done,
        timeout=WORK_DEADLINE,
        message=f"the idle worker to run a new task (only a push wakes it before {POLL:g} s)",
    )
    assert await queue.get_value(task_id) == 42


async def a_result_waiter_is_woken(queue: TaskQueue, waiter: TaskQueue, log: CallLog) -> None:
    """A ``get_result`` waiter (on the backend object ``log`` watches) returns within
    ``RESULT_DEADLINE`` of the finish, long before its next fallback re-read."""
    task_id = await queue.options(queue=RESULTS).enqueue(tasks.add, 2, 3)
    (claim,) = await queue.backend.claim([RESULTS], 1, "the-test", 60)
    log.clear()
    waiting = asyncio.ensure_future(waiter.get_result(task_id, timeout=120))

    def between_reads() -> bool:
        reads = log.began("get_task")
        if not reads:
            return False
        after_gap = len(reads) >= 2 and reads[-1] - reads[-2] >= GAP
        return after_gap or time.monotonic() - reads[-1] >= QUIET

    try:
        await wait_until(between_reads, timeout=30, message="the waiter to wait between reads")
        assert not waiting.done(), waiting
        now = time.time()
        value = queue.serializer.dumps(5)
        finish = Finish(
            ClaimRef(task_id, claim.fencing_token),
            TaskStatus.SUCCESS,
            value,
            None,
            None,
            now,
            now + 600,
        )
        reads = len(log.began("get_task"))
        assert await queue.backend.settle([finish]) == [True]
        try:
            result = await asyncio.wait_for(asyncio.shield(waiting), RESULT_DEADLINE)
        except TimeoutError:
            raise AssertionError(
                f"the result waiter was not woken within {RESULT_DEADLINE:g} s of the finish "
                f"(it read the task {reads} times before, the last one "
                f"{time.monotonic() - log.began('get_task')[-1]:.1f} s ago)"
            ) from None
    finally:
        waiting.cancel()
    assert result is not None and queue.serializer.loads(result.value or b"") == 5


async def test_pushes_wake_an_idle_worker_and_a_result_waiter(backends: BackendFactory) -> None:
    queue = TaskQueue(backends.make())
    await queue.connect()
    own = backends.make()
    slow_fallback(backends.name, own, POLL)
    log = CallLog(own)
    warm_up = await queue.enqueue(tasks.add, 1, 1)
    worker = AsyncWorker(own, poll_interval=POLL)
    try:
        await worker.start()
        assert await queue.get_value(warm_up, timeout=30) == 2
        await an_idle_worker_is_woken(queue, log)
        await a_result_waiter_is_woken(queue, TaskQueue(own), log)
    finally:
        await worker.stop()
        await queue.close()
        await own.close()


# -- after the push connection was cut ------------------------------------------------------


class Cut(Protocol):
    """Cuts a backend's push connection from outside and says when it is back."""

    url: str

    async def listening(self) -> bool:
        """Whether a push connection (not one that was cut) is up and subscribed."""
        ...

    async def cut(self) -> None:
        """Cut the push connections open now."""
        ...


class RedisCut:
    """A Redis server of the test's own (the shared one never has its clients killed), whose
    pub/sub connections ``cut`` kills with ``CLIENT KILL``."""

    def __init__(self, server: OwnRedis, prefix: str) -> None:
        self.server = server
        base = server.url.split("?", 1)[0]
        self.url = f"{base}?prefix={prefix}"
        self.killed: set[str] = set()

    async def _pubsub(self) -> dict[str, int]:
        """The server's pub/sub connections: id to number of subscriptions."""
        import redis.asyncio

        admin = redis.asyncio.Redis.from_url(self.url.split("?", 1)[0])
        try:
            listing = await admin.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
        finally:
            await admin.aclose()
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        found = {}
        for line in text.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            found[fields["id"]] = int(fields.get("sub", "0"))
        return found

    async def listening(self) -> bool:
        # The worker's listener is subscribed to its hello channel and the queue's work channel.
        return any(n >= 2 for id_, n in (await self._pubsub()).items() if id_ not in self.killed)

    async def cut(self) -> None:
        import redis.asyncio

        self.killed |= set(await self._pubsub())
        admin = redis.asyncio.Redis.from_url(self.url.split("?", 1)[0])
        try:
            killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        finally:
            await admin.aclose()
        assert killed >= 1, "no pub/sub connection to kill"


class PostgresCut:
    """The listening connections of one schema, ended with ``pg_terminate_backend``."""

    def __init__(self, url: str) -> None:
        self.url = url
        schema = parse_qs(urlsplit(url).query)["schema"][0]
        self.name = f"sitq-listen:{schema}"
        self.killed: set[int] = set()

    async def _listeners(self) -> list[tuple[int, str, str]]:
        import asyncpg

        admin = await asyncpg.connect(postgres_dsn())
        try:
            rows = await admin.fetch(
                "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = $1",
                self.name,
            )
        finally:
            await admin.close()
        return [(r["pid"], r["state"] or "", r["query"] or "") for r in rows]

    async def listening(self) -> bool:
        return any(
            pid not in self.killed and state == "idle" and query.upper().startswith("LISTEN")
            for pid, state, query in await self._listeners()
        )

    async def cut(self) -> None:
        import asyncpg

        admin = await asyncpg.connect(postgres_dsn())
        try:
            pids = await admin.fetch(
                "SELECT pid, pg_terminate_backend(pid) AS ended FROM pg_stat_activity "
                "WHERE application_name = $1",
                self.name,
            )
        finally:
            await admin.close()
        assert pids and all(r["ended"] for r in pids), pids
        self.killed |= {r["pid"] for r in pids}


class NatsCut:
    """The worker reaches NATS through a TCP proxy that ``cut`` resets (NATS keeps one connection
    for everything, the long-polling pull requests that wake idle workers included), accepting
    new connections again at once."""

    def __init__(self, proxy: TcpProxy, url: str) -> None:
        self.proxy = proxy
        parts = urlsplit(url)
        self.url = parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
        self.accepted_at_cut: int | None = None

    async def listening(self) -> bool:
        if self.accepted_at_cut is None:
            return self.proxy.open_connections >= 1
        return self.proxy.accepted > self.accepted_at_cut

    async def cut(self) -> None:
        self.accepted_at_cut = self.proxy.accepted
        assert await self.proxy.cut() >= 1, "no connection to cut"
        await self.proxy.start()


@pytest.fixture(params=["redis", "postgres", "nats"])
async def cut_case(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[BackendFactory, Cut]]:
    """A backend factory for the test's client, and the cutter whose ``url`` the worker uses."""
    if request.param == "redis":
        server = OwnRedis(tmp_path / "redis")
        await server.start()
        try:
            cutter = RedisCut(server, "push")
            yield BackendFactory("redis", lambda: backend_from_url(cutter.url), cutter.url), cutter
        finally:
            server.stop()
        return
    factory = FACTORIES[request.param](tmp_path, request)
    assert factory.url is not None
    if request.param == "postgres":
        yield factory, PostgresCut(factory.url)
    else:
        target = urlsplit(factory.url)
        assert target.hostname is not None and target.port is not None
        proxy = TcpProxy(target.hostname, target.port)
        await proxy.start()
        try:
            yield factory, NatsCut(proxy, factory.url)
        finally:
            await proxy.close()


async def test_pushes_wake_them_again_after_the_push_connection_is_cut(
    cut_case: tuple[BackendFactory, Cut],
) -> None:
    factory, cutter = cut_case
    queue = TaskQueue(factory.make())
    await queue.connect()
    own = backend_from_url(cutter.url)
    slow_fallback(factory.name, own, POLL)
    log = CallLog(own)
    warm_up = await queue.enqueue(tasks.add, 1, 1)
    worker = AsyncWorker(own, poll_interval=POLL)
    try:
        await worker.start()
        assert await queue.get_value(warm_up, timeout=30) == 2
        await worker_is_idle(log)
        await wait_until(cutter.listening, timeout=30, message="the push connection")
        cut_at = time.monotonic()
        await cutter.cut()
        await wait_until(
            cutter.listening, timeout=30, message="the push connection to be re-established"
        )
        # A claim made while the connection was down may have failed: the worker is back once it
        # has claimed since.
        await worker_is_idle(log, since=cut_at)
        await an_idle_worker_is_woken(queue, log)
        await a_result_waiter_is_woken(queue, TaskQueue(own), log)
    finally:
        await worker.stop()
        await queue.close()
        await own.close()
