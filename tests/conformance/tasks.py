"""Task functions the conformance tests enqueue; importable by worker subprocesses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import sitq


def add(x: int, y: int) -> int:
    return x + y


async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


async def noop() -> None:
    return None


def fail(message: str) -> None:
    raise ValueError(message)


def record(log_dir: str, label: str, sleep: float = 0.0) -> str:
    """Append one line per execution to ``log_dir/label``; return the executing pid."""
    started = time.time()
    if sleep:
        time.sleep(sleep)
    line = json.dumps({"pid": os.getpid(), "start": started, "end": time.time()})
    with open(Path(log_dir) / f"{label}.log", "a") as f:
        f.write(line + "\n")
    return f"{label}:{os.getpid()}"


async def async_record(log_dir: str, label: str, sleep: float = 0.0) -> str:
    """``record`` as a coroutine that sleeps without blocking the loop."""
    started = time.time()
    if sleep:
        await asyncio.sleep(sleep)
    line = json.dumps({"pid": os.getpid(), "start": started, "end": time.time()})
    with open(Path(log_dir) / f"{label}.log", "a") as f:
        f.write(line + "\n")
    return f"{label}:{os.getpid()}"


def executions(log_dir: str | Path, label: str) -> list[dict[str, float]]:
    """The executions ``record`` logged for ``label``."""
    path = Path(log_dir) / f"{label}.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mark_then_block(log_dir: str, label: str) -> None:
    """Log the start, then block until killed (the crash tests kill the worker here)."""
    with open(Path(log_dir) / f"{label}.started", "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(3600)


def started_pids(log_dir: str | Path, label: str) -> list[int]:
    path = Path(log_dir) / f"{label}.started"
    if not path.exists():
        return []
    return [int(p) for p in path.read_text().split()]


def crash_first_time(log_dir: str, label: str) -> str:
    """Kill the whole worker process on the first execution; succeed on later ones."""
    marker = Path(log_dir) / f"{label}.crashed"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def always_exit(code: int) -> None:
    os._exit(code)


def flaky(log_dir: str, label: str, failures: int) -> int:
    """Fail ``failures`` times, then return the number of the attempt that succeeded."""
    path = Path(log_dir) / f"{label}.count"
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n <= failures:
        raise ConnectionError(f"attempt {n} fails")
    return n


def retry_me(log_dir: str, label: str, times: int) -> int:
    path = Path(log_dir) / f"{label}.count"
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n <= times:
        raise sitq.Retry(delay=0.05)
    return n


def sleep_sync(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


async def sleep_async(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


class CustomError(Exception):
    pass


def raise_custom() -> None:
    raise CustomError("custom")


def block_first_time(log_dir: str, label: str) -> str:
    """Block forever in the first process that runs it (to be killed there); return at once
    in any later one."""
    marker = Path(log_dir) / f"{label}.first"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(3600)
    return f"done by {os.getpid()}"


def sleep_then_pid(seconds: float) -> int:
    """Sleep, then return the pid of the process that ran the task."""
    time.sleep(seconds)
    return os.getpid()


def record_item(log_dir: str, label: str, item: int) -> int:
    """Append ``item`` to ``log_dir/label.log`` (one short line: atomic with O_APPEND)."""
    fd = os.open(Path(log_dir) / f"{label}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{item} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return item


def kill_own_process() -> None:
    """Kill the process running the task (the worker itself, under an async worker)."""
    os.kill(os.getpid(), signal.SIGKILL)


def increment_under_lock(url: str, counter: str, times: str, face: str) -> None:
    """Run in a separate process: ``times`` read-modify-write increments of the ``counter``
    file, each under the lock ``counter``, logging each hold as ``pid start end``. ``face`` is
    ``async`` or ``sync`` (``SyncTaskQueue``)."""
    path = Path(counter)
    holds = path.with_suffix(".holds")

    def step() -> None:
        started = time.time()
        value = int(path.read_text()) if path.exists() else 0
        time.sleep(0.002)  # widen the window a missing lock would let the other process into
        path.write_text(str(value + 1))
        with open(holds, "a") as f:
            f.write(f"{os.getpid()} {started} {time.time()}\n")

    if face == "sync":
        with sitq.SyncTaskQueue(url) as sq:
            for _ in range(int(times)):
                with sq.lock("counter", ttl=10, timeout=60):
                    step()
        return

    async def main() -> None:
        async with sitq.TaskQueue(url) as q:
            for _ in range(int(times)):
                async with q.lock("counter", ttl=10, timeout=60):
                    step()

    asyncio.run(main())


def hold_lock_until_killed(url: str, name: str, ttl: str, marker: str) -> None:
    """Run in a separate process: take the lock, say so in ``marker``, then block forever."""

    async def main() -> None:
        async with sitq.TaskQueue(url) as q, q.lock(name, ttl=float(ttl), timeout=30):
            Path(marker).write_text(str(os.getpid()))
            await asyncio.sleep(3600)

    asyncio.run(main())


def kill_worker_process(kind: str) -> None:
    """Kill the worker process running the task: this very process under an async or a thread
    worker (``kind``), its parent under a process worker, whose pool process runs the task."""
    os.kill(os.getppid() if kind == "process" else os.getpid(), signal.SIGKILL)


def record_item_after(log_dir: str, label: str, item: int, seconds: float) -> int:
    """``record_item`` after a short sleep, so that a drain lasts long enough for every worker
    to take its share."""
    time.sleep(seconds)
    return record_item(log_dir, label, item)


def _wait_for_file(path: str, seconds: float = 60.0) -> None:
    """Block until ``path`` exists (the test's signal to go on), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {seconds} s")
        time.sleep(0.01)


def report_progress(release: str) -> dict[str, object]:
    """Report progress from a plain function, wait for ``release`` to exist, return the
    context it saw."""
    ctx = sitq.current_task()
    ctx.set_progress(0.25, "a quarter")
    ctx.set_progress(0.4, "resized 40 of 100 images")
    _wait_for_file(release)
    return {
        "task_id": ctx.task_id,
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "function": ctx.function,
        "worker_id": ctx.worker_id,
    }


async def async_report_progress(release: str) -> dict[str, object]:
    """``report_progress`` as a coroutine that waits without blocking the loop."""
    ctx = sitq.current_task()
    ctx.set_progress(0.4, "resized 40 of 100 images")
    await asyncio.to_thread(_wait_for_file, release)
    return {
        "task_id": ctx.task_id,
        "queue": ctx.queue,
        "attempt": ctx.attempt,
        "function": ctx.function,
        "worker_id": ctx.worker_id,
    }


def wait_for_file(path: str) -> str:
    """Run until ``path`` exists."""
    _wait_for_file(path)
    return "released"


class Greeter:
    """A class whose bound method is enqueued."""

    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    def greet(self, name: str) -> str:
        return f"{self.greeting}, {name}"


class RunsCodeWhenUnpickled:
    """A payload that runs code if anything unpickles it: it writes ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (Path.touch, (Path(self.marker),))


async def block_loop(seconds: float, then: float = 0.0) -> str:
    """Block the worker's event loop (no heartbeat can run) for ``seconds``, then wait
    ``then`` seconds without blocking it."""
    time.sleep(seconds)
    if then:
        await asyncio.sleep(then)
    return "unblocked"


def record_start(log_dir: str, label: str, item: int) -> int:
    """Append ``{"item": item, "start": <time.time() at the start>}`` to ``log_dir/label.log``."""
    line = json.dumps({"item": item, "start": time.time(), "pid": os.getpid()})
    with open(Path(log_dir) / f"{label}.log", "a") as f:
        f.write(line + "\n")
    return item


def record_start_then_wait(log_dir: str, label: str, item: int, release: str) -> int:
    """``record_start``, then run until the file ``release`` exists."""
    record_start(log_dir, label, item)
    _wait_for_file(release)
    return item
