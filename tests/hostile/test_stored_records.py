"""Corrupted records written straight into each backend's store, next to good tasks, with a real
worker process draining them: bad input never kills a worker and never loses other tasks
(docs/contract.md, Bad input never kills a worker).

Per backend, tasks are enqueued through the API; some of them ("victims") are then damaged in
the store with the backend's own driver, the way a bug, a bad migration or someone with write
access could: a truncated or missing payload, unreadable options or a newer format version,
fields of the wrong type, an unknown state, a record that is not even JSON. Then one ``sitq
worker`` process drains the queue. Every case must end one of two ways:

* **failed**: the victim has a failed result whose error says what is wrong with it; or
* **skipped**: the record cannot be read even as a task (an unknown state, a record that is not
  JSON), so it never runs and the worker logs it, or reading it raises a clear ``BackendError``
  at the caller.

Meanwhile every good task must run exactly once (each execution appends a line to a file) and
succeed, and the worker must still be running at the end and stop cleanly (exit code 0).
The figures (good tasks, executions, results, corrupt records failed/skipped) are printed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sitq import BackendError, TaskQueue, TaskStatus
from tests.conformance import tasks
from tests.conftest import FACTORIES, BackendFactory, WorkerProcesses, wait_until
from tests.hostile.conftest import report

pytestmark = pytest.mark.multiprocess

GOOD = 12
SKIPPED = "skipped"


@dataclass
class Forgery:
    """One way to damage a victim's stored record, and what must become of the victim."""

    name: str
    corrupt: Callable[[str], Awaitable[None]]
    expect: str
    """A substring of the failed result's error, or ``SKIPPED``."""
    log: str | None = None
    """For a skipped victim: a substring the worker must log about it."""


async def drain_with_forgeries(
    factory: BackendFactory,
    worker_processes: WorkerProcesses,
    tmp_path: Path,
    forgeries: Callable[[TaskQueue], list[Forgery]],
) -> None:
    log_dir = tmp_path / "runs"
    log_dir.mkdir()
    queue = TaskQueue(factory.make())
    await queue.connect()
    try:
        cases = forgeries(queue)
        good: dict[str, str] = {}
        victims: dict[str, Forgery] = {}
        for i in range(max(GOOD, len(cases))):
            label = f"good-{i}"
            good[label] = await queue.enqueue(tasks.record, str(log_dir), label)
            if i < len(cases):
                case = cases[i]
                victim = await queue.options(task_id=f"bad-{case.name}").enqueue(
                    tasks.record, str(log_dir), f"bad-{case.name}"
                )
                victims[victim] = case
        for victim, case in victims.items():
            await case.corrupt(victim)

        assert factory.url is not None
        proc = worker_processes.start(factory.url, concurrency=4)
        for label, task_id in good.items():
            result = await queue.get_result(task_id, timeout=30)
            assert result is not None, f"good task {label} did not finish"
            assert result.status is TaskStatus.SUCCESS, (label, result.error)
        failed = skipped = 0
        for victim, case in victims.items():
            if case.expect == SKIPPED:
                if case.log is not None:
                    await wait_until(
                        lambda c=case: c.log in worker_processes.output(proc),
                        timeout=20,
                        message=f"the worker to report {case.name}",
                    )
                print(f"  {case.name}: skipped: {await _assert_not_finished(queue, victim, case)}")
                skipped += 1
                continue
            result = await _result(queue, victim)
            assert result is not None, f"{case.name}: the victim did not finish"
            assert result.status is TaskStatus.FAILED, (case.name, result.status, result.error)
            assert case.expect in (result.error or ""), (case.name, result.error)
            print(f"  {case.name}: failed: {result.error}")
            failed += 1
        output = worker_processes.output(proc)
        assert proc.poll() is None, "the worker died:\n" + output
        assert "claim failed" not in output, "a bad record broke claims:\n" + output
        assert worker_processes.stop(proc) == 0, worker_processes.output(proc)

        runs = {label: len(tasks.executions(log_dir, label)) for label in good}
        assert runs == dict.fromkeys(good, 1), f"good tasks must run exactly once: {runs}"
        bad_runs = {c.name: len(tasks.executions(log_dir, f"bad-{c.name}")) for c in cases}
        assert not any(bad_runs.values()), f"a corrupted task ran: {bad_runs}"
        # What `sitq info` shows: the damaged records do not stop it.
        stats = await queue.stats()
        assert sum(s.succeeded for s in stats) == len(good)
        assert sum(s.failed for s in stats) == failed
        report(
            f"{factory.name}: {len(good)} good tasks, {sum(runs.values())} executions, "
            f"{len(good)} results; {len(cases)} corrupted records: {failed} failed with a "
            f"clear error, {skipped} skipped; worker alive to the end"
        )
    finally:
        await queue.close()


async def _result(queue: TaskQueue, task_id: str) -> Any:
    return await queue.get_result(task_id, timeout=30)


async def _assert_not_finished(queue: TaskQueue, task_id: str, case: Forgery) -> str:
    """A skipped victim is never run; reading it gives its status or a clear error."""
    try:
        status = await queue.get_status(task_id)
    except BackendError as exc:
        message = str(exc)
    else:
        assert status is None or not status.is_final, (case.name, status)
        return f"status {status}"
    assert task_id in message, (case.name, message)
    return f"get_status raises {message}"


def _factory(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
    return FACTORIES[name](tmp_path, request)


# -- SQLite ----------------------------------------------------------------------------------


def _sqlite_forgeries(path: str) -> Callable[[TaskQueue], list[Forgery]]:
    def make(queue: TaskQueue) -> list[Forgery]:
        def update(sql: str, *params: Any) -> Callable[[str], Awaitable[None]]:
            async def corrupt(task_id: str) -> None:
                conn = sqlite3.connect(path, isolation_level=None, timeout=10)
                try:
                    conn.execute(sql, (*params, task_id))
                finally:
                    conn.close()

            return corrupt

        set_ = "UPDATE sitq_tasks SET {} WHERE id = ?".format
        v2 = json.dumps({"v": 2, "timeout": None, "retry": None, "max_deliveries": 5})
        return [
            Forgery("truncated-payload", update(set_("payload = substr(payload, 1, 9)")), "load"),
            Forgery("no-payload", update(set_("payload = NULL")), "payload"),
            Forgery("text-payload", update(set_("payload = 'not a pickle'")), "payload"),
            Forgery("garbage-options", update(set_("options = '{\"v\": 1, '")), "options"),
            Forgery("options-v2", update(set_("options = ?"), v2), "format version 2"),
            Forgery("blob-options", update(set_("options = x'ff00'")), "options"),
            Forgery("text-priority", update(set_("priority = 'urgent'")), "priority"),
            Forgery("text-retries", update(set_("retries = 'many'")), "retries"),
            Forgery("text-result-ttl", update(set_("result_ttl = 'forever'")), "result_ttl"),
            Forgery("negative-result-ttl", update(set_("result_ttl = -5")), "result_ttl"),
            Forgery("text-enqueued-at", update(set_("enqueued_at = 'yesterday'")), "enqueued_at"),
            Forgery("unknown-state", update(set_("state = 9")), SKIPPED),
            # An unreadable concurrency limit must not break the claim (it counts as 1); the
            # truncated payload then fails the task.
            Forgery(
                "text-concurrency-limit",
                update(
                    set_(
                        "concurrency_key = 'k', concurrency_limit = 'many', "
                        "payload = substr(payload, 1, 9)"
                    )
                ),
                "load",
            ),
        ]

    return make


async def test_sqlite_corrupted_rows(
    tmp_path: Path, request: pytest.FixtureRequest, worker_processes: WorkerProcesses
) -> None:
    factory = _factory("sqlite", tmp_path, request)
    path = str(tmp_path / "sitq.db")
    await drain_with_forgeries(factory, worker_processes, tmp_path, _sqlite_forgeries(path))


# -- PostgreSQL ------------------------------------------------------------------------------


def _postgres_forgeries(queue: TaskQueue) -> list[Forgery]:
    import asyncpg

    from tests.services import postgres_dsn

    schema = queue.backend.schema  # type: ignore[attr-defined]

    def update(assignment: str, *params: Any) -> Callable[[str], Awaitable[None]]:
        async def corrupt(task_id: str) -> None:
            conn = await asyncpg.connect(postgres_dsn())
            try:
                n = len(params) + 1
                await conn.execute(
                    f'UPDATE "{schema}".tasks SET {assignment} WHERE id = ${n}', *params, task_id
                )
            finally:
                await conn.close()

        return corrupt

    v2 = json.dumps({"v": 2, "timeout": None, "retry": None, "max_deliveries": 5})
    return [
        Forgery("truncated-payload", update("payload = substring(payload from 1 for 9)"), "load"),
        Forgery("empty-payload", update("payload = ''::bytea"), "load"),
        Forgery("garbage-options", update("options = $1", '{"v": 1, '), "options"),
        Forgery("options-v2", update("options = $1", v2), "format version 2"),
        Forgery("null-options", update("options = 'null'"), "not a JSON object"),
        Forgery("nan-result-ttl", update("result_ttl = 'NaN'"), "result_ttl"),
        Forgery("infinite-result-ttl", update("result_ttl = 'Infinity'"), "result_ttl"),
        Forgery("negative-result-ttl", update("result_ttl = -5"), "result_ttl"),
        Forgery("nan-enqueued-at", update("enqueued_at = 'NaN'"), "enqueued_at"),
        Forgery("negative-attempts", update("attempts = -7"), "attempts"),
        Forgery("negative-retries", update("retries = -1"), "retries"),
        Forgery("unknown-state", update("state = 9"), SKIPPED),
        Forgery("nan-eta", update("eta = 'NaN'"), SKIPPED),
    ]


async def test_postgres_corrupted_rows(
    tmp_path: Path, request: pytest.FixtureRequest, worker_processes: WorkerProcesses
) -> None:
    factory = _factory("postgres", tmp_path, request)
    await drain_with_forgeries(factory, worker_processes, tmp_path, _postgres_forgeries)


# -- Redis -----------------------------------------------------------------------------------


def _redis_forgeries(queue: TaskQueue) -> list[Forgery]:
    import redis.asyncio

    from tests.services import redis_url

    prefix = queue.backend.prefix  # type: ignore[attr-defined]
    base = f"{prefix}:{{{prefix}:default}}"

    def command(*args: Any) -> Callable[[str], Awaitable[None]]:
        """Run ``args``; ``{t}`` stands for the victim's hash, ``{id}`` for its id and
        ``{sched}`` for the queue's set of scheduled tasks; ``TRUNCATE`` cuts the payload short
        and ``SCHEDULE`` moves the task from the ready set to the scheduled one, due now."""

        async def corrupt(task_id: str) -> None:
            client = redis.asyncio.Redis.from_url(redis_url())
            try:
                key = f"{base}:t:{task_id}"
                names = {"{t}": key, "{id}": task_id}
                filled = [names.get(a, a) if isinstance(a, str) else a for a in args]
                if filled[0] == "TRUNCATE":
                    payload = await client.hget(key, "pl")
                    await client.hset(key, "pl", payload[:9])
                elif filled[0] == "SCHEDULE":  # from the ready set to the scheduled one
                    await client.zrem(f"{base}:ready", await client.hget(key, "rk"))
                    await client.hdel(key, "rk")
                    await client.zadd(f"{base}:sched", {task_id: 0})
                else:
                    await client.execute_command(*filled)
            finally:
                await client.aclose()

        return corrupt

    def both(*steps: Callable[[str], Awaitable[None]]) -> Callable[[str], Awaitable[None]]:
        async def corrupt(task_id: str) -> None:
            for step in steps:
                await step(task_id)

        return corrupt

    v2 = json.dumps({"v": 2, "timeout": None, "retry": None, "max_deliveries": 5})
    return [
        Forgery("truncated-payload", command("TRUNCATE"), "load"),
        Forgery("no-payload", command("HDEL", "{t}", "pl"), "payload"),
        Forgery("no-options", command("HDEL", "{t}", "op"), "options"),
        Forgery("garbage-options", command("HSET", "{t}", "op", '{"v": 1, '), "options"),
        Forgery("options-v2", command("HSET", "{t}", "op", v2), "format version 2"),
        Forgery("binary-options", command("HSET", "{t}", "op", b"\xff\xfe"), "options"),
        Forgery("garbage-priority", command("HSET", "{t}", "pri", "urgent"), "priority"),
        Forgery("no-priority", command("HDEL", "{t}", "pri"), "priority"),
        Forgery("spaced-priority", command("HSET", "{t}", "pri", "1 2 3"), "fields"),
        Forgery("garbage-result-ttl", command("HSET", "{t}", "ttl", "forever"), "result_ttl"),
        Forgery("garbage-fence", command("HSET", "{t}", "fence", "x"), "fencing token"),
        Forgery("garbage-attempts", command("HSET", "{t}", "att", "many"), "attempts"),
        Forgery("garbage-enqueued-at", command("HSET", "{t}", "enq", "yesterday"), "enqueued_at"),
        # Due now, in the scheduled set, with a priority and ETA that are not numbers: the
        # claim script that promotes it to the ready set must not fail on it.
        Forgery(
            "scheduled-garbage",
            both(command("HSET", "{t}", "pri", "urgent", "eta", "soon"), command("SCHEDULE")),
            "priority",
        ),
        Forgery("unknown-state", command("HSET", "{t}", "st", "9"), SKIPPED),
        Forgery("no-hash", command("DEL", "{t}"), SKIPPED),
    ]


async def test_redis_corrupted_hashes(
    tmp_path: Path, request: pytest.FixtureRequest, worker_processes: WorkerProcesses
) -> None:
    factory = _factory("redis", tmp_path, request)
    await drain_with_forgeries(factory, worker_processes, tmp_path, _redis_forgeries)


# -- NATS JetStream --------------------------------------------------------------------------


def _nats_forgeries(queue: TaskQueue) -> list[Forgery]:
    import nats

    from tests.services import nats_url

    bucket = queue.backend.stream  # type: ignore[attr-defined]

    def rewrite(
        change: Callable[[dict[str, Any]], bytes | None],
    ) -> Callable[[str], Awaitable[None]]:
        """Rewrite the victim's record: ``change`` gets its JSON head and returns the new
        record (``None``: the head as changed in place)."""

        async def corrupt(task_id: str) -> None:
            nc = await nats.connect(nats_url())
            try:
                kv = await nc.jetstream().key_value(bucket)
                entry = await kv.get(task_id)
                assert entry.value is not None
                head = json.loads(entry.value.partition(b"\n")[0])
                data = change(head)
                await kv.put(task_id, json.dumps(head).encode() if data is None else data)
            finally:
                await nc.close()

        return corrupt

    async def forged_message(task_id: str) -> None:
        """The record made unreadable, and a second message for the task whose record
        revision is not a number."""
        nc = await nats.connect(nats_url())
        try:
            js = nc.jetstream()
            kv = await js.key_value(bucket)
            entry = await kv.get(task_id)
            assert entry.value is not None
            # A pending record is a JSON head, then its payload after the first newline.
            head = {**json.loads(entry.value.partition(b"\n")[0]), "o": "{}", "rev": "x"}
            await js.publish(f"sitq.{bucket}.q.default.0", json.dumps(head).encode() + b"\n")
            await kv.put(task_id, b"not json at all")
        finally:
            await nc.close()

    def set_(**fields: Any) -> Callable[[str], Awaitable[None]]:
        return rewrite(lambda head: head.update(fields))

    def drop(field: str) -> Callable[[str], Awaitable[None]]:
        def change(head: dict[str, Any]) -> None:
            del head[field]

        return rewrite(change)

    return [
        Forgery("garbage-attempts", set_(a="many"), "attempts"),
        Forgery("garbage-priority", set_(p="urgent"), "priority"),
        Forgery("garbage-eta", set_(eta="soon"), "eta"),
        Forgery("garbage-enqueued-at", set_(enq="yesterday"), "enqueued_at"),
        Forgery("garbage-result-ttl", set_(ttl="forever"), "result_ttl"),
        Forgery("negative-result-ttl", set_(ttl=-5), "result_ttl"),
        Forgery("no-retries", drop("r"), "retries"),
        Forgery("number-queue", set_(q=7), "queue"),
        Forgery("other-id", set_(id=12345), "id"),
        Forgery("garbage-concurrency-limit", set_(ck="k", cl="many"), "concurrency_limit"),
        Forgery("no-state", drop("s"), SKIPPED, log="cannot be read (its state is None)"),
        Forgery("unknown-state", set_(s="frozen"), SKIPPED, log="its state is 'frozen'"),
        Forgery("not-json", rewrite(lambda head: b"not json at all"), SKIPPED, "not a sitq record"),
        Forgery("json-array", rewrite(lambda head: b"[1, 2, 3]"), SKIPPED, "not a sitq record"),
        Forgery("forged-message", forged_message, SKIPPED, "not a sitq record"),
    ]


async def test_nats_corrupted_records(
    tmp_path: Path, request: pytest.FixtureRequest, worker_processes: WorkerProcesses
) -> None:
    factory = _factory("nats", tmp_path, request)
    await drain_with_forgeries(factory, worker_processes, tmp_path, _nats_forgeries)
