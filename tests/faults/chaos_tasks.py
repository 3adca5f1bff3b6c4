"""Task functions of the chaos cases (``test_chaos.py``); importable by worker subprocesses.

Every function appends one line per event to ``<log_dir>/runs.log``: ``<key> <pid> <event>``,
where the key is the task's item number (or, for a cron tick, its task id) and the event is
``start`` when an execution begins and ``end`` just before it returns. Each line is a single
``os.write`` on a file opened with ``O_APPEND``, so lines of concurrent processes never mix.
Functions come in coroutine and plain flavours, so that every worker kind runs both.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import Counter
from pathlib import Path

RUNS = "runs.log"
CRON_TASK_PREFIX = "sitq-task-"


def log_event(log_dir: str, key: object, event: str) -> None:
    """Append ``<key> <pid> <event>`` to the run log."""
    fd = os.open(Path(log_dir) / RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{key} {os.getpid()} {event}\n".encode())
    finally:
        os.close(fd)


def events(log_dir: str | Path, event: str = "start") -> Counter[str]:
    """How many times each key logged ``event``."""
    path = Path(log_dir) / RUNS
    if not path.exists():
        return Counter()
    found: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == event:
            found[parts[0]] += 1
    return found


def pids(log_dir: str | Path, key: object, event: str) -> list[int]:
    """The pids that logged ``event`` for ``key``, in the order they logged it."""
    path = Path(log_dir) / RUNS
    if not path.exists():
        return []
    wanted = str(key)
    return [
        int(parts[1])
        for parts in (line.split() for line in path.read_text().splitlines())
        if len(parts) == 3 and parts[0] == wanted and parts[2] == event
    ]


def _execution_number(log_dir: str, item: int) -> int:
    """Which execution of the item this is (1 for the first), counted in a file of its own."""
    fd = os.open(Path(log_dir) / f"count-{item}", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, b".")
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


async def quick(log_dir: str, item: int) -> int:
    """Return the item at once."""
    log_event(log_dir, item, "start")
    log_event(log_dir, item, "end")
    return item


def quick_sync(log_dir: str, item: int) -> int:
    """Return the item at once."""
    log_event(log_dir, item, "start")
    log_event(log_dir, item, "end")
    return item


async def nap(log_dir: str, item: int, seconds: float) -> int:
    """Sleep without blocking the loop, then return the item."""
    log_event(log_dir, item, "start")
    await asyncio.sleep(seconds)
    log_event(log_dir, item, "end")
    return item


def nap_sync(log_dir: str, item: int, seconds: float) -> int:
    """Sleep, then return the item."""
    log_event(log_dir, item, "start")
    time.sleep(seconds)
    log_event(log_dir, item, "end")
    return item


def flaky(log_dir: str, item: int, failures: int) -> int:
    """Raise ``ValueError`` on the first ``failures`` executions, then return the item."""
    log_event(log_dir, item, "start")
    number = _execution_number(log_dir, item)
    if number <= failures:
        raise ValueError(f"item {item}: execution {number} fails")
    log_event(log_dir, item, "end")
    return item


async def doomed(log_dir: str, item: int) -> int:
    """Always raise ``ValueError``."""
    log_event(log_dir, item, "start")
    raise ValueError(f"doomed item {item}")


async def slow_first(log_dir: str, item: int, seconds: float) -> int:
    """Sleep ``seconds`` on the first execution (longer than the task's timeout), return the
    item at once on later ones."""
    log_event(log_dir, item, "start")
    if _execution_number(log_dir, item) == 1:
        await asyncio.sleep(seconds)
    log_event(log_dir, item, "end")
    return item


def slow_first_sync(log_dir: str, item: int, seconds: float) -> int:
    """:func:`slow_first` as a plain function."""
    log_event(log_dir, item, "start")
    if _execution_number(log_dir, item) == 1:
        time.sleep(seconds)
    log_event(log_dir, item, "end")
    return item


async def await_reply(log_dir: str, label: str, address: str, hold_loop: bool) -> int:
    """On the first execution, connect to the Unix socket ``address``, send the executing pid
    (one line) and wait for one byte of reply; on later executions, return at once. Logs the
    start and the end of every execution; returns the executing pid.

    With ``hold_loop`` the first execution waits with a blocking read, holding the worker's
    event loop meanwhile (as a run computing something does): a worker frozen then is resumed
    in the middle of the run's step, which ends, handing the outcome to the worker, before
    anything else on the loop gets a turn. Otherwise it awaits the reply on the loop.
    """
    log_event(log_dir, label, "start")
    first = Path(log_dir) / f"{label}.first"
    if not first.exists():
        first.write_text(str(os.getpid()))
        hello = f"{os.getpid()}\n".encode()
        if hold_loop:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(address)
                sock.sendall(hello)
                sock.recv(1)
        else:
            reader, writer = await asyncio.open_unix_connection(address)
            try:
                writer.write(hello)
                await writer.drain()
                await reader.readexactly(1)
            finally:
                writer.close()
    log_event(log_dir, label, "end")
    return os.getpid()


async def cron_tick(log_dir: str) -> str:
    """Log the tick's own task id, and return it.

    A tick's call has no argument that says which tick it is, so it reads its task id from
    the name that the worker gives the asyncio task running a claim (``sitq-task-<id>``): run
    it on async workers only, where a coroutine task runs in that asyncio task.
    """
    current = asyncio.current_task()
    name = current.get_name() if current is not None else ""
    if not name.startswith(CRON_TASK_PREFIX):
        raise RuntimeError(f"cannot tell the tick's task id from the asyncio task {name!r}")
    task_id = name.removeprefix(CRON_TASK_PREFIX)
    log_event(log_dir, task_id, "start")
    return task_id
