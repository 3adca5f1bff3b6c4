"""ProcessPool: child processes that run task payloads, survive crashes, timeouts and cancels."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sitq._procpool import ProcessPool
from sitq._task import Outcome
from sitq.serializers import PickleSerializer

S = PickleSerializer()


def payload(func: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
    return S.dumps_call(func, args, kwargs)


def value(outcome: Outcome) -> Any:
    assert outcome.ok, outcome.error
    assert outcome.value is not None
    return S.loads(outcome.value)


def assert_dead(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def wait_for_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.01)
    return path.read_text()


# -- task functions (module level: they travel by reference, so the child imports this module) --


def double(x: int) -> int:
    return x * 2


def boom(message: str) -> None:
    raise ValueError(message)


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


def getpid() -> int:
    return os.getpid()


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def record_pid_and_sleep(path: str, seconds: float) -> int:
    tmp = path + ".tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)  # the test polls for the file: it must never see it half written
    time.sleep(seconds)
    return os.getpid()


def timed_sleep(seconds: float) -> tuple[int, float, float]:
    start = time.time()
    time.sleep(seconds)
    return os.getpid(), start, time.time()


def shout(text: str) -> str:
    print(text)
    return text


# -- serializers that fail to load in the child --------------------------------------------------


def _exit_while_loading(code: int) -> PickleSerializer:
    os._exit(code)


def _serializer_unless(marker: str) -> PickleSerializer:
    if os.path.exists(marker):
        raise RuntimeError(f"refusing to load: {marker} exists")
    return PickleSerializer()


class ExitingSerializer(PickleSerializer):
    def __reduce__(self) -> tuple[Any, ...]:
        return (_exit_while_loading, (5,))


class MarkerSerializer(PickleSerializer):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (_serializer_unless, (self.marker,))


@pytest.fixture
async def pool() -> AsyncIterator[ProcessPool]:
    p = ProcessPool(2, S)
    await p.start()
    try:
        yield p
    finally:
        await p.close()


async def test_returns_value(pool: ProcessPool) -> None:
    outcome = await pool.run(payload(double, 21), None)
    assert value(outcome) == 42


async def test_raising_function(pool: ProcessPool) -> None:
    outcome = await pool.run(payload(boom, "no good"), None)
    assert not outcome.ok
    assert outcome.error == "ValueError: no good"
    assert outcome.exc_types[0] == "builtins:ValueError"
    assert "builtins:Exception" in outcome.exc_types
    assert "boom" in (outcome.traceback or "")


async def test_module_function_lambda_and_closure(pool: ProcessPool) -> None:
    assert value(await pool.run(payload(double, 5), None)) == 10
    assert value(await pool.run(payload(lambda x: x + 1, 1), None)) == 2
    offset = 100

    def add_offset(x: int) -> int:
        return x + offset

    assert value(await pool.run(payload(add_offset, 1), None)) == 101


async def test_async_function(pool: ProcessPool) -> None:
    assert value(await pool.run(payload(async_add, 2, b=3), None)) == 5


async def test_runs_in_another_process(pool: ProcessPool) -> None:
    assert value(await pool.run(payload(getpid), None)) != os.getpid()


async def test_exit_code_is_reported_and_pool_recovers(pool: ProcessPool) -> None:
    outcome = await pool.run(payload(exit_with, 3), None)
    assert not outcome.ok
    assert outcome.error == "ChildProcessError: the task's worker process exited with code 3"
    assert outcome.exc_types[0] == "builtins:ChildProcessError"
    assert outcome.traceback == ""
    for _ in range(3):  # more tasks than the pool had children left
        assert value(await pool.run(payload(double, 2), None)) == 4


async def test_killed_by_signal_is_named(pool: ProcessPool) -> None:
    outcome = await pool.run(payload(kill_self), None)
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.endswith("was killed by signal SIGKILL")
    assert value(await pool.run(payload(double, 1), None)) == 2


async def test_timeout_kills_and_replaces(pool: ProcessPool, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    outcome = await pool.run(payload(record_pid_and_sleep, str(pid_file), 30), 0.5)
    elapsed = time.monotonic() - started
    assert elapsed < 10
    assert outcome.timed_out
    assert not outcome.ok
    assert outcome.error == "TimeoutError: task exceeded its timeout of 0.5 s"
    assert "builtins:TimeoutError" in outcome.exc_types
    assert_dead(int(pid_file.read_text()))
    assert value(await pool.run(payload(double, 4), 5)) == 8


async def test_task_within_its_timeout_succeeds(pool: ProcessPool) -> None:
    assert value(await pool.run(payload(double, 4), 10.0)) == 8


async def test_cancel_kills_the_child(pool: ProcessPool, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    running = asyncio.ensure_future(
        pool.run(payload(record_pid_and_sleep, str(pid_file), 30), None)
    )
    pid = int(await wait_for_file(pid_file))
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert_dead(pid)
    assert value(await pool.run(payload(double, 3), None)) == 6


async def test_cancel_while_queued_keeps_the_pool_whole(tmp_path: Path) -> None:
    p = ProcessPool(1, S)
    await p.start()
    try:
        busy = asyncio.ensure_future(p.run(payload(timed_sleep, 0.3), None))
        queued = asyncio.ensure_future(p.run(payload(double, 1), None))
        await asyncio.sleep(0.05)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (await busy).ok
        assert value(await p.run(payload(double, 7), None)) == 14
    finally:
        await p.close()


async def test_two_tasks_run_in_parallel(pool: ProcessPool) -> None:
    first, second = await asyncio.gather(
        pool.run(payload(timed_sleep, 0.5), None), pool.run(payload(timed_sleep, 0.5), None)
    )
    (pid1, start1, end1), (pid2, start2, end2) = value(first), value(second)
    assert pid1 != pid2
    assert max(start1, start2) < min(end1, end2)


async def test_more_callers_than_children_queue() -> None:
    p = ProcessPool(1, S)
    await p.start()
    try:
        outcomes = await asyncio.gather(*(p.run(payload(getpid), None) for _ in range(5)))
        assert len({value(o) for o in outcomes}) == 1
    finally:
        await p.close()


async def test_task_output_reaches_parent_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    p = ProcessPool(1, S)
    await p.start()
    try:
        assert value(await p.run(payload(shout, "hello from the child"), None))
        assert "hello from the child" in capfd.readouterr().out
    finally:
        await p.close()


async def test_close_stops_every_child_and_leaks_nothing() -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    p = ProcessPool(2, S)
    await p.start()
    outcomes = await asyncio.gather(
        p.run(payload(timed_sleep, 0.2), None), p.run(payload(timed_sleep, 0.2), None)
    )
    pids = {value(o)[0] for o in outcomes}
    assert len(pids) == 2
    await p.close()
    await p.close()
    for pid in pids:
        assert_dead(pid)
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    outcome = await p.run(payload(double, 1), None)
    assert not outcome.ok
    assert "closed" in (outcome.error or "")


async def test_close_while_runs_are_pending(tmp_path: Path) -> None:
    p = ProcessPool(1, S)
    p.close_grace = 0.2
    await p.start()
    pid_file = tmp_path / "pid"
    running = asyncio.ensure_future(p.run(payload(record_pid_and_sleep, str(pid_file), 30), None))
    queued = asyncio.ensure_future(p.run(payload(double, 1), None))
    pid = int(await wait_for_file(pid_file))
    started = time.monotonic()
    await p.close()
    first, second = await asyncio.gather(running, queued)
    assert time.monotonic() - started < 10
    assert not first.ok
    assert "closed" in (first.error or "")
    assert not second.ok
    assert "closed" in (second.error or "")
    assert_dead(pid)


async def test_start_reports_a_child_that_exits() -> None:
    p = ProcessPool(1, ExitingSerializer())
    with pytest.raises(RuntimeError, match="exited with code 5"):
        await p.start()
    await p.close()


async def test_start_reports_a_child_that_cannot_load_the_serializer(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    marker.touch()
    p = ProcessPool(1, MarkerSerializer(str(marker)))
    with pytest.raises(RuntimeError, match="refusing to load") as info:
        await p.start()
    assert "exited with code 1" in str(info.value)
    await p.close()


async def test_failed_replacement_gives_a_failure_outcome(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    p = ProcessPool(1, MarkerSerializer(str(marker)))
    await p.start()
    try:
        marker.touch()  # from now on, new children fail to start
        died = await p.run(payload(exit_with, 3), None)
        assert "code 3" in (died.error or "")
        outcome = await p.run(payload(double, 1), None)
        assert not outcome.ok
        assert outcome.error is not None
        assert outcome.error.startswith("RuntimeError: a worker process")
        assert "\n" not in outcome.error
        assert "refusing to load" in (outcome.traceback or "")
        marker.unlink()  # the pool starts a child again on the next run
        assert value(await p.run(payload(double, 1), None)) == 2
    finally:
        await p.close()
