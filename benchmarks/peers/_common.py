"""What every peer benchmark shares: the interface, worker processes, timing and isolated stores.

Rules every peer follows, so the figures compare:

* Tasks are ``noop`` or ``sleep`` (10 ms) of ``benchmarks.peers.tasks``.
* A worker is one process, built with the peer's own worker API and its defaults, except
  ``CONCURRENCY`` (10) where it has that setting; a workload runs one of them, or four on the
  same store (``Workers``). Each is built and imported before the clock starts (``ready``),
  then told ``go``, as sitq's own ``benchmarks._worker`` is. No logging is configured in it, so
  no peer writes a log line per task.
* Result waiting uses the peer's own API. Where that API polls, it is given ``RESULT_POLL``
  (1 ms) as its interval; where the peer has no way to wait, its store is polled every 1 ms.
* Every workload runs on a fresh store: a temporary SQLite file, a PostgreSQL schema, a unique
  Redis key prefix or queue name in database ``REDIS_URL`` (14 unless told otherwise: some peers
  have fixed key names), a NATS stream named after a fresh token. Each is removed afterwards.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Protocol, TypeVar

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_DSN = os.environ.get("SITQ_BENCH_POSTGRES_DSN", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SITQ_BENCH_PEERS_REDIS_URL", "redis://127.0.0.1:6379/14")
NATS_URL = os.environ.get("SITQ_BENCH_NATS_URL", "nats://127.0.0.1:4222")

CONCURRENCY = 10
RESULT_POLL = 0.001
DONE_POLL = 0.005
WAIT_TIMEOUT = float(os.environ.get("SITQ_BENCH_PEERS_TIMEOUT", "300"))
IDLE_SECONDS = 1.0
# Latency sampling stops after this many seconds even short of ``n`` samples (a worker that
# polls every 0.5 s would otherwise take 150 s for 300 samples); ``samples`` says how many.
LATENCY_SECONDS = float(os.environ.get("SITQ_BENCH_PEERS_LATENCY_SECONDS", "20"))
BATCH = 1000

T = TypeVar("T")
Check = Callable[[], "Awaitable[bool] | bool"]


class PeerBench(Protocol):
    """One task queue on one backend; every method runs on a fresh store and cleans up."""

    name: str  # e.g. "huey"
    backend: str  # "sqlite" | "postgres" | "redis" | "nats"
    notes: str  # what the peer lacks or does differently
    # Optional: ``max_drain_tasks: int`` caps the drain for a peer too slow for ``--tasks``.

    async def enqueue_one(self, n: int) -> float:
        """Tasks per second, one ``enqueue`` call per task, one client."""
        ...

    async def enqueue_many(self, n: int) -> float | None:
        """Tasks per second with the peer's many-tasks API (batches of 1,000); None if none."""
        ...

    async def drain(self, n: int, processes: int = 1, task: str = "noop") -> float:
        """Tasks per second: ``n`` queued ``task`` tasks (``noop`` or ``sleep``), ``processes``
        worker processes, from ``go`` until all are done."""
        ...

    async def latency(self, n: int) -> dict[str, float] | None:
        """Enqueue-to-result ``p50_ms``/``p95_ms``/``p99_ms`` and ``idle_cpu_fraction``, one
        task at a time with an idle worker process; None if the peer cannot wait for results."""
        ...


def run_uvloop_if_installed(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` the way the ``taskiq worker`` and ``pgq run`` commands do: on uvloop where it
    is installed (it is, in the benchmark's virtualenv), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def token() -> str:
    """A fresh lower-case name for one store: ``sqb`` and 12 hex digits."""
    return "sqb" + uuid.uuid4().hex[:12]


async def resolve(value: Awaitable[T] | T) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


class WorkerProcess:
    """``python -m benchmarks.peers._worker MODULE CONFIG`` in its own process group."""

    def __init__(self, module: str, config: dict[str, Any]) -> None:
        self.module = module
        self.ready = False
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in kill()
            mode="w+", prefix=f"sitq-peer-{module}-", suffix=".log"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.peers._worker", module, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            cwd=ROOT,
            start_new_session=True,
        )

    def log_tail(self, chars: int = 2000) -> str:
        if self._log.closed:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-chars:]

    def expect(self, word: str) -> None:
        """Read the worker's next line; it must be ``word``."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != word:
            tail = self.log_tail()
            self.kill()
            raise RuntimeError(f"{self.module} worker said {line!r}, expected {word!r}:\n{tail}")

    def send_go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"{self.module} worker exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def cpu_seconds(self) -> float:
        """CPU time of the worker process and of its children it has waited for."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after 5 s; then close the log."""
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            break
        # Forked children (work horses, pool processes) may outlive the leader.
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._log.close()


class Workers:
    """``processes`` worker processes of one peer on one store, all started at once on ``go``
    (each process as one would start it by hand: ``processes=4`` is four worker commands).
    They are launched at once and import and build their worker while the caller fills the
    queue; ``go`` waits until each has said ``ready`` before it starts the clock."""

    def __init__(self, module: str, config: dict[str, Any], processes: int = 1) -> None:
        self.module = module
        self.procs: list[WorkerProcess] = []
        try:
            for _ in range(processes):
                self.procs.append(WorkerProcess(module, config))
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def go(self) -> float:
        """Wait until every worker is ready, then tell each to start; returns the start time
        (``time.perf_counter``)."""
        for proc in self.procs:
            if not proc.ready:
                proc.expect("ready")
                proc.ready = True
        start = time.perf_counter()
        for proc in self.procs:
            proc.send_go()
        for proc in self.procs:
            proc.expect("started")
        return start

    def check_alive(self) -> None:
        for proc in self.procs:
            proc.check_alive()

    def log_tail(self, chars: int = 2000) -> str:
        return "\n".join(proc.log_tail(chars) for proc in self.procs)

    def cpu_seconds(self) -> float:
        """CPU time of the worker processes (and of their children they have waited for)."""
        return sum(proc.cpu_seconds() for proc in self.procs)

    def kill(self) -> None:
        for proc in self.procs:
            proc.kill()


async def rate(n: int, call: Callable[[], Awaitable[object] | object]) -> float:
    """Tasks per second of ``n`` calls, one after the other (sync or async ``call``)."""
    start = time.perf_counter()
    for _ in range(n):
        await resolve(call())
    return n / (time.perf_counter() - start)


async def batched_rate(n: int, call: Callable[[int], Awaitable[object] | object]) -> float:
    """Tasks per second of ``call(size)`` in batches of ``BATCH``."""
    sizes = [BATCH] * (n // BATCH) + ([n % BATCH] if n % BATCH else [])
    start = time.perf_counter()
    for size in sizes:
        await resolve(call(size))
    return n / (time.perf_counter() - start)


async def wait_done(worker: Workers, last: Check, every: Check) -> float:
    """Poll ``last`` (cheap: is the last task done?), then ``every`` (are all done?); the time
    all were first seen done. Fails if the worker dies or after ``WAIT_TIMEOUT``."""
    deadline = time.perf_counter() + WAIT_TIMEOUT

    async def first_seen(check: Check, interval: float) -> tuple[float, bool]:
        waited = False
        while True:
            seen = time.perf_counter()  # the start of the call that finds it done
            if await resolve(check()):
                return seen, waited
            worker.check_alive()
            if seen > deadline:
                raise TimeoutError(
                    f"{worker.module}: tasks not done after {WAIT_TIMEOUT:.0f} s; worker log:\n"
                    f"{worker.log_tail(1000)}"
                )
            waited = True
            await asyncio.sleep(interval)

    done, _ = await first_seen(last, DONE_POLL)
    seen, stragglers = await first_seen(every, 4 * DONE_POLL)
    return seen if stragglers else done


async def drain_rate(n: int, worker: Workers, last: Check, every: Check) -> float:
    """Start the worker on ``n`` queued tasks; tasks per second until all are done."""
    start = worker.go()
    return n / (await wait_done(worker, last, every) - start)


async def latency_stats(
    n: int, worker: Workers, one: Callable[[], Awaitable[object] | object]
) -> dict[str, float]:
    """``one()`` enqueues a task and waits for its result; ``n`` samples (or as many as fit in
    ``LATENCY_SECONDS``) after 3 warm-ups, then the idle worker's CPU over ``IDLE_SECONDS``."""
    worker.go()
    for _ in range(3):
        await resolve(one())
    samples: list[float] = []
    deadline = time.perf_counter() + LATENCY_SECONDS
    while len(samples) < n and time.perf_counter() < deadline:
        start = time.perf_counter()
        await resolve(one())
        samples.append((time.perf_counter() - start) * 1000)
    cpu_before = worker.cpu_seconds()
    await asyncio.sleep(IDLE_SECONDS)
    idle = (worker.cpu_seconds() - cpu_before) / IDLE_SECONDS
    worker.check_alive()
    samples.sort()
    return {
        "p50_ms": statistics.median(samples),
        "p95_ms": samples[max(int(len(samples) * 0.95) - 1, 0)],
        "p99_ms": samples[max(int(len(samples) * 0.99) - 1, 0)],
        "idle_cpu_fraction": idle,
        "samples": len(samples),
    }


async def poll_until(check: Check, timeout: float = 60.0, interval: float = RESULT_POLL) -> None:
    """For peers that cannot wait for a result: poll their store every ``interval``."""
    deadline = time.perf_counter() + timeout
    while not await resolve(check()):
        if time.perf_counter() > deadline:
            raise TimeoutError("no result")
        await asyncio.sleep(interval)


# -- isolated stores ---------------------------------------------------------------------------


@asynccontextmanager
async def sqlite_dir() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="sitq-peer-") as tmp:
        yield Path(tmp)


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema in ``POSTGRES_DSN``, dropped with everything in it afterwards."""
    import asyncpg

    schema = token()
    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        yield schema
    finally:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def pg_dsn(schema: str) -> str:
    """``POSTGRES_DSN`` whose connections have ``search_path`` set to ``schema`` (libpq URI)."""
    sep = "&" if "?" in POSTGRES_DSN else "?"
    return f"{POSTGRES_DSN}{sep}options=-csearch_path%3D{schema}"


async def redis_delete(patterns: list[str], url: str = REDIS_URL) -> int:
    """Delete the keys matching ``patterns`` (SCAN, never FLUSHDB) in ``url``'s database."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    deleted = 0
    try:
        for pattern in patterns:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += await client.unlink(*batch)
                    batch = []
            if batch:
                deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


@asynccontextmanager
async def redis_store(*fixed: str) -> AsyncIterator[str]:
    """A fresh token; afterwards every key containing it, and the peer's ``fixed`` key
    patterns (names it cannot prefix), are deleted from ``REDIS_URL``'s database."""
    tok = token()
    if fixed:
        await redis_delete(list(fixed))
    try:
        yield tok
    finally:
        await redis_delete([f"*{tok}*", *fixed])


@asynccontextmanager
async def nats_store() -> AsyncIterator[str]:
    """A fresh token; afterwards every JetStream stream whose name contains it is deleted
    (task streams, ``KV_`` buckets, ``OBJ_`` object stores)."""
    import nats

    tok = token()
    try:
        yield tok
    finally:
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                name = info.config.name or ""
                if tok in name.lower():
                    await js.delete_stream(name)
        finally:
            await nc.close()
