"""docs/contract.md, Cron schedules: every worker drives the schedules and each tick runs exactly
once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sitq import AsyncWorker, ConfigurationError, TaskQueue, TaskStatus
from sitq.cron import CronDriver, tick_task_id
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until

EVERY_SECOND = "* * * * * *"


async def _workers_are_up(queue: TaskQueue, count: int) -> None:
    # One quick task per worker, so the schedule starts when every worker already runs.
    ids = [await queue.enqueue(tasks.add, i, i) for i in range(count * 4)]
    for task_id in ids:
        assert await queue.get_result(task_id, timeout=60) is not None


async def test_three_worker_processes_run_each_tick_exactly_once(
    shared_queue: TaskQueue,
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
) -> None:
    assert shared_backends.url is not None
    procs = [worker_processes.start(shared_backends.url, concurrency=2) for _ in range(3)]
    await _workers_are_up(shared_queue, 3)
    await shared_queue.add_cron(
        "per-second", EVERY_SECOND, tasks.record, args=(str(tmp_path), "tick")
    )
    (info,) = await shared_queue.list_crons()
    assert info.last_tick is not None
    start = info.last_tick.timestamp()

    await wait_until(
        lambda: len(tasks.executions(tmp_path, "tick")) >= 4,
        timeout=60,
        message="four ticks to run",
    )
    for proc in procs:
        assert worker_processes.stop(proc) == 0
    (info,) = await shared_queue.list_crons()
    assert info.last_tick is not None
    last = info.last_tick.timestamp()
    assert last - start >= 3

    ran = 0
    for tick in range(int(start) + 1, int(last) + 2):
        # The tick after ``last`` may have been enqueued just before the workers stopped.
        status = await shared_queue.get_status(tick_task_id("per-second", tick))
        if tick <= last:
            assert status is TaskStatus.SUCCESS, f"tick {tick}: {status}"
        if status is TaskStatus.SUCCESS:
            ran += 1
    assert len(tasks.executions(tmp_path, "tick")) == ran, "a tick ran more than once"


async def test_schedules_added_changed_and_removed_while_workers_run(
    queue: TaskQueue, tmp_path: Path
) -> None:
    async with AsyncWorker(queue.backend, concurrency=2) as worker:
        driver = worker._cron_driver
        # Passes every 0.2 s instead of every second: what is checked below counts passes and
        # ticks, not seconds.
        driver.refresh = 0.2
        await queue.add_cron("job", "0 0 1 1 *", tasks.record, args=(str(tmp_path), "job"))
        await queue.add_cron(
            "job", EVERY_SECOND, tasks.record, args=(str(tmp_path), "job"), priority=5
        )
        await wait_until(
            lambda: len(tasks.executions(tmp_path, "job")) >= 2,
            timeout=30,
            message="the changed schedule to run without a restart",
        )
        assert [c.expression for c in await queue.list_crons()] == [EVERY_SECOND]
        assert await queue.remove_cron("job") is True
        assert await queue.remove_cron("job") is False
        assert await queue.list_crons() == []
        passes = driver.passes
        await wait_until(lambda: driver.passes >= passes + 2, timeout=30, message="two passes")
        # A tick enqueued by a pass that began before the removal has run by now, or is stored.
        settled = len(tasks.executions(tmp_path, "job"))
        due = int(time.time()) + 1  # the next tick the schedule would have had
        await wait_until(lambda: time.time() >= due, timeout=30, message="the next second")
        passes = driver.passes
        await wait_until(lambda: driver.passes >= passes + 2, timeout=30, message="two passes")
        # A whole pass began after that tick was due: had the schedule been kept, it would
        # have stored it.
        assert await queue.get_status(tick_task_id("job", due)) is None, "a removed schedule ran"
        assert len(tasks.executions(tmp_path, "job")) == settled, "a removed schedule ran"


async def test_after_an_outage_the_last_missed_tick_runs_once(queue: TaskQueue) -> None:
    backend = queue.backend
    await queue.add_cron("hourly", "0 * * * *", tasks.add, args=(1, 2))
    await queue.add_cron("hourly-skip", "0 * * * *", tasks.add, args=(3, 4), misfire="skip")
    now = float(int(time.time()) // 3600 * 3600 + 1800)  # half past the current hour
    start = now - 5 * 3600
    for name in ("hourly", "hourly-skip"):
        (record,) = [r for r in await backend.list_crons() if r.name == name]
        assert await backend.advance_cron(name, record.last_tick, start)
    driver = CronDriver(backend)
    await driver.run_once(now=now)
    await driver.run_once(now=now)
    assert driver.enqueued == 1, "five missed ticks, one run"
    latest = now - 1800
    assert await queue.get_status(tick_task_id("hourly", latest)) is TaskStatus.PENDING
    for missed in range(1, 5):
        assert await queue.get_status(tick_task_id("hourly", latest - missed * 3600)) is None
    assert await queue.get_status(tick_task_id("hourly-skip", latest)) is None
    for info in await queue.list_crons():
        assert info.last_tick is not None and info.last_tick.timestamp() == latest


async def test_bad_schedules_fail_at_add_cron(queue: TaskQueue) -> None:
    with pytest.raises(ConfigurationError, match="fields"):
        await queue.add_cron("x", "* * *", tasks.add, args=(1, 2))
    with pytest.raises(ConfigurationError, match="IANA"):
        await queue.add_cron("x", "* * * * *", tasks.add, args=(1, 2), timezone="Nowhere/City")
    with pytest.raises(ConfigurationError, match="misfire"):
        await queue.add_cron("x", "* * * * *", tasks.add, args=(1, 2), misfire="later")
    with pytest.raises(ConfigurationError, match="task_id"):
        await queue.add_cron("x", "* * * * *", tasks.add, args=(1, 2), task_id="fixed")
    with pytest.raises(ConfigurationError, match="cron name"):
        await queue.add_cron("has space", "* * * * *", tasks.add, args=(1, 2))
    with pytest.raises(ConfigurationError, match="cannot enqueue"):
        await queue.add_cron("x", "* * * * *", tasks.add, args=(1, 2, 3))
    assert await queue.list_crons() == []
