"""SQLite-only behaviour: the schema upgrade, the claim's query plans, keyed concurrency across
processes sharing one file, parked tasks, and the lock table."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sitq import BackendError, SQLiteBackend, TaskQueue
from sitq.backends.base import CODE_STATUS, stats_from_counts, stats_kind
from sitq.backends.sqlite import _listing
from sitq.backends.sqlite import backend as sqlite_backend
from sitq.models import Claim, Finish, NewTask, QueueStats, TaskStatus
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, wait_until


def _finish(claim: Claim) -> Finish:
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


def _task(
    task_id: str, key: str | None = None, limit: int | None = None, **fields: object
) -> NewTask:
    now = time.time()
    values: dict[str, object] = {
        "id": task_id,
        "queue": "default",
        "payload": b"p",
        "options": "{}",
        "priority": 0,
        "eta": now,
        "enqueued_at": now,
        "result_ttl": 3600.0,
        "concurrency_key": key,
        "concurrency_limit": limit,
    }
    values.update(fields)
    return NewTask(**values)  # type: ignore[arg-type]


def _read(path: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _parked(path: Path) -> int:
    return int(_read(path, "SELECT COUNT(*) FROM sitq_tasks WHERE state = 0 AND parked = 1")[0][0])


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    b = SQLiteBackend(tmp_path / "sitq.db")
    await b.connect()
    yield b
    await b.close()


# -- schema ---------------------------------------------------------------------------------


def _version_1_file(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in sqlite_backend._MIGRATIONS.steps[0].sql.split(";"):
        if statement.strip():
            conn.execute(statement)
    now = time.time()
    rows = [
        ("keyed-1", 5, "k", 1),
        ("keyed-2", 5, "k", 1),
        ("plain", 0, None, None),
    ]
    for task_id, priority, key, limit in rows:
        conn.execute(
            "INSERT INTO sitq_tasks (id, queue, state, priority, eta, payload, options, "
            "enqueued_at, result_ttl, concurrency_key, concurrency_limit) "
            "VALUES (?, 'default', 0, ?, ?, x'00', '{}', ?, 3600, ?, ?)",
            (task_id, priority, now - 1, now - 1, key, limit),
        )
    conn.execute("PRAGMA user_version=1")
    conn.close()


async def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_1_file(path)
    # Several clients opening the old file at once: one upgrades it, the others see the latest.
    clients = [SQLiteBackend(path) for _ in range(4)]
    await asyncio.gather(*(c.connect() for c in clients))
    try:
        assert _read(path, "PRAGMA user_version")[0][0] == sqlite_backend.SCHEMA_VERSION == 3
        claimed = await clients[0].claim(["default"], 10, "w", 30)
        assert sorted(c.task_id for c in claimed) == ["keyed-1", "plain"]
        assert await clients[1].claim(["default"], 10, "w", 30) == []
        await clients[2].put_cron("c", b"d", 60.0)
        assert [r.name for r in await clients[3].list_crons()] == ["c"]
        assert await clients[3].acquire_lock("l", "t", 30)
    finally:
        for c in clients:
            await c.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={sqlite_backend.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(BackendError, match="newer than this sitq understands"):
        await SQLiteBackend(path).connect()


async def test_claims_read_the_partial_indexes(backend: SQLiteBackend, tmp_path: Path) -> None:
    plans = {
        sqlite_backend._DUE: ("q", 1.0, 5),
        sqlite_backend._KEYED_DUE: ("q", 1.0, 5),
        sqlite_backend._KEY_RUNNING: ("q", "k", 1.0),
        sqlite_backend._PARK: ("q", "k", 1.0, 1, 10),
        sqlite_backend._PARKED: ("q", "k"),
    }
    expected = {
        sqlite_backend._DUE: "sitq_tasks_due (queue=?)",
        sqlite_backend._KEYED_DUE: "sitq_tasks_keyed_due (queue=?)",
        sqlite_backend._KEY_RUNNING: "sitq_tasks_keyed_running (queue=? AND concurrency_key=? AND",
        sqlite_backend._PARK: "sitq_tasks_keyed (queue=? AND concurrency_key=? AND parked=?)",
        sqlite_backend._PARKED: "sitq_tasks_keyed (queue=? AND concurrency_key=? AND parked=?)",
    }
    for sql, params in plans.items():
        plan = " | ".join(
            str(r[3]) for r in _read(tmp_path / "sitq.db", "EXPLAIN QUERY PLAN " + sql, *params)
        )
        assert expected[sql] in plan, plan
        assert "TEMP B-TREE" not in plan and "SCAN sitq_tasks" not in plan, plan


def _listing_plans(path: Path) -> list[tuple[str, str]]:
    """Every statement a listing page runs (each status, with and without a queue, first page
    and after a position), with its query plan."""
    plans = []
    conn = sqlite3.connect(path)
    try:
        for status in TaskStatus:
            position = "[0, 1.0, 5]" if status is TaskStatus.PENDING else "[1.0, 5]"
            for queue in (None, "q"):
                for after in (None, position):
                    start = None if after is None else _listing._position(status, after)
                    for ranges in _listing._sources(status, queue, start, 1.0):
                        for sql, params in ranges:
                            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, [*params, 51])
                            plans.append((sql, " | ".join(str(r[3]) for r in rows)))
    finally:
        conn.close()
    return plans


async def test_listing_pages_are_read_through_indexes(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    plans = _listing_plans(tmp_path / "sitq.db")
    for sql, plan in plans:
        assert plan.startswith(("SEARCH sitq_tasks USING INDEX", "SCAN sitq_tasks USING INDEX"))
        # Read in index order, stopping at the page's end: no sort of everything that matched.
        assert "TEMP B-TREE" not in plan, (sql, plan)
    finished = [plan for sql, plan in plans if "queue_finished" in sql]
    assert finished and all("(state=? AND queue=?" in plan for plan in finished), finished
    assert len(plans) == 40  # pending 4 + 12 (three sources), running 6, finished 3 x 6


# -- counts ---------------------------------------------------------------------------------


def _stats_by_scan(path: Path, now: float) -> list[QueueStats]:
    """What the counts mean: every row read, expired results left out."""
    rows = _read(
        path,
        "SELECT queue, state, eta > ?, COUNT(*) FROM sitq_tasks "
        "WHERE expires_at IS NULL OR expires_at > ? GROUP BY 1, 2, 3",
        now,
        now,
    )
    return stats_from_counts(
        (queue, stats_kind(CODE_STATUS[state], bool(future)), n)
        for queue, state, future, n in rows
        if state in CODE_STATUS
    )


async def test_stats_count_every_state_and_leave_out_expired_results(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    path = tmp_path / "sitq.db"
    t0 = time.time()
    await backend.enqueue([_task(f"a{i}", queue="a", eta=t0) for i in range(3)])
    await backend.enqueue([_task(f"s{i}", queue="a", eta=t0 + 500) for i in range(2)])
    await backend.enqueue([_task(f"k{i}", "k", 1, queue="a", eta=t0) for i in range(2)])
    await backend.enqueue([_task(f"b{i}", queue="b", eta=t0 - 1) for i in range(6)])
    claims = await backend.claim(["b"], 4, "w", 30)
    assert len(claims) == 4
    ok, failed = TaskStatus.SUCCESS, TaskStatus.FAILED
    settled = [
        Finish(claims[0].ref, ok, None, None, None, t0, t0 + 100),
        Finish(claims[1].ref, ok, None, None, None, t0, t0 + 100),
        Finish(claims[2].ref, failed, None, "ValueError", None, t0, t0 + 1000),
    ]
    assert await backend.settle(settled) == [True] * 3
    await backend.enqueue([_task(f"c{i}", queue="c", eta=t0 + 2000) for i in range(3)])
    await backend.cancel("c0", t0)
    await backend.cancel("c1", t0)
    await backend.requeue(["c1"], t0)
    await backend.enqueue([_task("damaged", queue="d")])
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE sitq_tasks SET state = 9 WHERE id = 'damaged'")
    conn.close()

    def counts(stats: list[QueueStats]) -> dict[str, tuple[int, ...]]:
        return {
            s.queue: (s.pending, s.scheduled, s.running, s.succeeded, s.failed, s.cancelled)
            for s in stats
        }

    assert counts(await backend.stats(t0)) == {
        "a": (5, 2, 0, 0, 0, 0),
        "b": (2, 0, 1, 2, 1, 0),
        "c": (1, 1, 0, 0, 0, 1),
    }
    # Results expire at t0 + 100, + 1000 and + 3600 (the cancelled one); nothing is purged.
    assert counts(await backend.stats(t0 + 5000)) == {
        "a": (7, 0, 0, 0, 0, 0),
        "b": (2, 0, 1, 0, 0, 0),
        "c": (2, 0, 0, 0, 0, 0),
    }
    for now in (t0, t0 + 200, t0 + 600, t0 + 1500, t0 + 2500, t0 + 4000):
        assert await backend.stats(now) == _stats_by_scan(path, now), now


async def test_stats_are_counted_from_indexes_off_the_event_loop(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    statements = {
        sqlite_backend._STATS_PENDING: (1.0,),
        sqlite_backend._STATS_RUNNING: (),
        sqlite_backend._STATS_FINISHED: (),
        sqlite_backend._STATS_EXPIRED: (1.0, 1.0),
    }
    for sql, params in statements.items():
        plan = " | ".join(
            str(r[3]) for r in _read(tmp_path / "sitq.db", "EXPLAIN QUERY PLAN " + sql, *params)
        )
        # An index holding the tasks of one state (or the expired ones), never the table's rows
        # one by one, and grouped in index order (the expired ones are few: they may be sorted).
        assert plan.startswith(("SCAN sitq_tasks USING", "SEARCH sitq_tasks USING")), plan
        assert "TEMP B-TREE" not in plan or sql is sqlite_backend._STATS_EXPIRED, plan
    await backend.enqueue([_task("t")])
    others: list[str] = []

    async def other() -> None:
        others.append("ran")

    task = asyncio.create_task(other())
    (stats,) = await backend.stats(time.time())
    # The count ran on the backend's thread: the event loop ran other work meanwhile.
    assert others == ["ran"] and stats.pending == 1
    await task


# -- concurrency keys -----------------------------------------------------------------------


def keyed_claimer(path: str, out: str) -> None:
    """Run in a subprocess: claim and settle until nothing is left, then report."""
    asyncio.run(_claim_until_done(path, out))


async def _claim_until_done(path: str, out: str) -> None:
    backend = SQLiteBackend(path)
    await backend.connect()
    claimed: list[str] = []
    peak = 0
    try:
        while True:
            claims = await backend.claim(["default"], 3, f"p{os.getpid()}", 30)
            if claims:
                peak = max(peak, _running(Path(path), "k"))
                await asyncio.sleep(0.003)  # the task's work, so that claims overlap
                applied = await backend.settle([_finish(c) for c in claims])
                assert all(applied)
                claimed += [c.task_id for c in claims]
                continue
            (stats,) = await backend.stats(time.time())
            if stats.pending == stats.running == 0:
                break
            await backend.wait_for_work(["default"], 0.5)
    finally:
        await backend.close()
    Path(out).write_text(json.dumps({"claimed": claimed, "peak": peak}))


def _running(path: Path, key: str) -> int:
    return int(
        _read(
            path,
            "SELECT COUNT(*) FROM sitq_tasks WHERE state = 1 AND concurrency_key = ?",
            key,
        )[0][0]
    )


async def test_processes_claiming_at_once_never_exceed_the_limit(
    tmp_path: Path, worker_processes: WorkerProcesses
) -> None:
    path = tmp_path / "sitq.db"
    backend = SQLiteBackend(path)
    await backend.connect()
    try:
        new = [_task(f"k{i}", "k", 2) for i in range(150)]
        new += [_task(f"j{i}", "j", 1) for i in range(30)]
        new += [_task(f"plain{i}") for i in range(60)]
        await backend.enqueue(new)
    finally:
        await backend.close()
    outs = [tmp_path / f"claimer-{i}.json" for i in range(6)]
    procs = [
        worker_processes.call(f"{__name__}:keyed_claimer", str(path), str(out)) for out in outs
    ]
    peak = 0

    def done() -> bool:
        nonlocal peak
        peak = max(peak, _running(path, "k"))
        assert peak <= 2, f"{peak} tasks of a key with limit 2 ran at once"
        return all(p.poll() is not None for p in procs)

    await wait_until(done, timeout=120, interval=0.001, message="the claimers to finish")
    assert [p.returncode for p in procs] == [0] * len(procs)
    reports = [json.loads(out.read_text()) for out in outs]
    claimed = [t for r in reports for t in r["claimed"]]
    assert sorted(claimed) == sorted(t.id for t in new), "every task was claimed exactly once"
    assert max(r["peak"] for r in reports) <= 2
    assert sum(1 for r in reports if r["claimed"]) >= 2, "the claimers shared the work"


async def test_a_backlog_of_one_key_is_parked_and_released_one_slot_at_a_time(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    path = tmp_path / "sitq.db"
    backlog = 2 * sqlite_backend._PARK_BUDGET + 500
    await backend.enqueue([_task(f"a{i}", "a", 1, priority=9) for i in range(backlog)])
    await backend.enqueue([_task("b", "b", 1), _task("plain")])
    claimed: list[Claim] = []
    for _ in range(10):  # each claim parks at most its budget, and the others still get out
        claimed += await backend.claim(["default"], 5, "w", 30)
    assert sorted(c.task_id for c in claimed) == ["a0", "b", "plain"]
    assert _parked(path) == backlog - 1, "the blocked tasks are set aside, not walked again"
    (a0,) = [c for c in claimed if c.task_id == "a0"]
    assert await backend.settle([_finish(a0)]) == [True]
    assert _parked(path) == backlog - 2, "a freed slot makes one parked task claimable"
    (a1,) = await backend.claim(["default"], 5, "w", 30)
    assert a1.task_id == "a1", "parked tasks keep their order"
    (stats,) = await backend.stats(time.time())
    assert (stats.pending, stats.running) == (backlog - 2, 3)


async def test_a_pick_left_out_of_a_claim_on_several_queues_stays_claimable(
    backend: SQLiteBackend,
) -> None:
    await backend.enqueue([_task(f"k{i}", "k", 1, queue="q1") for i in range(2)])
    await backend.enqueue([_task(f"urgent{i}", queue="q2", priority=10) for i in range(2)])
    # The claim picks k0, finds k1 blocked behind it and parks the key's tasks, then hands out
    # only the two urgent tasks: k0 must not stay parked with nothing of its key running.
    first = await backend.claim(["q1", "q2"], 2, "w", 30)
    assert sorted(c.task_id for c in first) == ["urgent0", "urgent1"]
    claimed = await backend.claim(["q1"], 5, "w", 30)
    assert [c.task_id for c in claimed] == ["k0"]


async def test_cancelling_the_task_a_freed_slot_waits_for_passes_the_slot_on(
    backend: SQLiteBackend,
) -> None:
    await backend.enqueue([_task(f"k{i}", "k", 1) for i in range(3)])
    (k0,) = await backend.claim(["default"], 5, "w", 30)
    assert await backend.claim(["default"], 5, "w", 30) == []
    assert await backend.settle([_finish(k0)]) == [True]
    await backend.cancel("k1", time.time())
    (k2,) = await backend.claim(["default"], 5, "w", 30)
    assert k2.task_id == "k2"


async def test_a_stale_settlement_of_a_keyed_task_frees_nothing(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    await backend.enqueue([_task(f"k{i}", "k", 1) for i in range(3)])
    (lost,) = await backend.claim(["default"], 5, "dead", 0.2)
    taken: list[Claim] = []

    async def reclaimed() -> bool:
        taken.extend(await backend.claim(["default"], 5, "w", 30))
        return bool(taken)

    await wait_until(reclaimed, timeout=10, message="the expired claim to be taken over")
    assert [c.task_id for c in taken] == [lost.task_id]
    parked = _parked(tmp_path / "sitq.db")
    assert parked == 2
    assert await backend.settle([_finish(lost)]) == [False], "the old claim is fenced off"
    assert _parked(tmp_path / "sitq.db") == parked, "a refused settlement frees no slot"
    assert await backend.claim(["default"], 5, "w", 30) == []
    assert await backend.settle([_finish(taken[0])]) == [True]
    assert len(await backend.claim(["default"], 5, "w", 30)) == 1


async def test_an_idle_worker_does_not_spin_on_blocked_keyed_tasks(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    queue = TaskQueue(backend)
    keyed = queue.options(concurrency_key="k", concurrency_limit=1)
    for i in range(3):
        await keyed.enqueue(tasks.add, i, i)
    (running,) = await backend.claim(["default"], 5, "w", 30)
    # The first empty claim parks the blocked tasks (a write, which wakes this process's own
    # watch once); from then on each cycle waits until its timeout.
    cycles = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert await backend.claim(["default"], 5, "w", 30) == []
        await backend.wait_for_work(["default"], 0.25)
        cycles += 1
    assert cycles <= 8, f"{cycles} claim/wait cycles in one second: a busy loop"
    # A settle in this process ends the wait of a worker on the same backend object. The claim
    # just before makes the order of the two irrelevant: a change since a worker's last claim
    # ends its wait, whether the wait began before the settle or only after it.
    assert await backend.claim(["default"], 5, "w", 30) == []
    wait = asyncio.create_task(backend.wait_for_work(["default"], 60))
    done, _ = await asyncio.wait({wait}, timeout=0.3)
    assert not done, "the wait ended with nothing to end it"
    assert await backend.settle([_finish(running)]) == [True]
    await asyncio.wait_for(wait, 10)
    assert len(await backend.claim(["default"], 5, "w", 30)) == 1


# -- locks ----------------------------------------------------------------------------------


async def test_an_expired_lock_is_neither_extended_nor_released_and_is_purged(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    assert await backend.acquire_lock("gone", "t1", 0.2)
    assert await backend.acquire_lock("kept", "t2", 60)

    def expired() -> bool:
        rows = _read(tmp_path / "sitq.db", "SELECT expires_at FROM sitq_locks WHERE name = 'gone'")
        return float(rows[0][0]) <= time.time()

    await wait_until(expired, timeout=10, message="the lock's TTL to run out")
    assert await backend.extend_lock("gone", "t1", 30) is False
    assert await backend.release_lock("gone", "t1") is False
    assert await backend.acquire_lock("gone", "t3", 0.2)

    async def purged() -> bool:
        await backend.purge_expired(time.time())
        return [r[0] for r in _read(tmp_path / "sitq.db", "SELECT name FROM sitq_locks")] == [
            "kept"
        ]

    await wait_until(purged, timeout=10, message="the expired lock row to be removed")
    assert await backend.release_lock("kept", "t2") is True
