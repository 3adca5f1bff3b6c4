"""The breakages ``python -m tests.mutants`` applies: one per promise, and the tests that guard
it. Each ``old`` text must occur in the source exactly as often as ``count`` says; when the code
moves, the runner reports the mutant as stale and it is updated here."""

from __future__ import annotations

from tests.mutants import Mutant

_FENCE_TEST = (
    "tests/conformance/test_backend_steps.py"
    "::test_a_stale_claim_is_refused_while_the_new_claim_still_runs"
)


def _fence(backend: str) -> tuple[str, ...]:
    return (f"{_FENCE_TEST}[{backend}]",)


_SQLITE = "src/sitq/backends/sqlite/backend.py"
_POSTGRES = "src/sitq/backends/postgres/backend.py"
_SQLITE_SQL = "src/sitq/backends/sqlite/queries.sql"
_POSTGRES_SQL = "src/sitq/backends/postgres/queries.sql"
_REDIS = "src/sitq/backends/redis/backend.py"
_REDIS_PUBSUB = "src/sitq/backends/redis/_pubsub.py"
_REDIS_LUA = "src/sitq/backends/redis/scripts"
_NATS = "src/sitq/backends/nats/backend.py"
_NATS_SETTLE = "src/sitq/backends/nats/_settle.py"
_NATS_CRON = "src/sitq/backends/nats/_cron.py"
_NATS_CONSUMERS = "src/sitq/backends/nats/_consumers.py"
_MEMORY = "src/sitq/backends/memory.py"

FENCING: list[Mutant] = [
    # SQLite: each settlement's statement, and the lease extension, without the token.
    Mutant(
        "sqlite-finish-ignores-token",
        "a stale claim cannot finish a task (SQLite, no key)",
        _SQLITE_SQL,
        "lease_until = NULL\nWHERE id = ? AND fence = ? AND state = 1;\n\n-- name: reschedule",
        "lease_until = NULL\nWHERE id = ? AND (fence = ? OR 1 = 1) AND state = 1;\n\n"
        "-- name: reschedule",
        _fence("sqlite"),
    ),
    Mutant(
        "sqlite-retry-ignores-token",
        "a stale claim cannot reschedule a task (SQLite, no key)",
        _SQLITE_SQL,
        "lease_until = NULL\nWHERE id = ? AND fence = ? AND state = 1;\n\n-- name: release",
        "lease_until = NULL\nWHERE id = ? AND (fence = ? OR 1 = 1) AND state = 1;\n\n"
        "-- name: release",
        _fence("sqlite"),
    ),
    Mutant(
        "sqlite-release-ignores-token",
        "a stale claim cannot release a task (SQLite, no key)",
        _SQLITE_SQL,
        "attempts - 1, worker_id = NULL,\nlease_until = NULL\nWHERE id = ? AND fence = ?",
        "attempts - 1, worker_id = NULL,\nlease_until = NULL\nWHERE id = ? AND (fence = ? OR 1 = 1)",
        _fence("sqlite"),
    ),
    Mutant(
        "sqlite-extend-ignores-token",
        "a stale claim cannot extend its lease (SQLite)",
        _SQLITE,
        '"UPDATE sitq_tasks SET lease_until = ? WHERE id = ? AND fence = ? "',
        '"UPDATE sitq_tasks SET lease_until = ? WHERE id = ? AND (fence = ? OR 1 = 1) "',
        _fence("sqlite"),
    ),
    # PostgreSQL: the settle statement's three parts, and the lease extension.
    Mutant(
        "postgres-finish-ignores-token",
        "a stale claim cannot finish a task (PostgreSQL, no key)",
        _POSTGRES_SQL,
        "WHERE t.id = i.id AND t.fence = i.fence AND t.state = 1\n    RETURNING t.id, t.fence,",
        "WHERE t.id = i.id AND t.state = 1\n    RETURNING t.id, i.fence AS fence,",
        _fence("postgres"),
    ),
    Mutant(
        "postgres-retry-ignores-token",
        "a stale claim cannot reschedule a task (PostgreSQL, no key)",
        _POSTGRES_SQL,
        "AS r(id, fence, eta, error, traceback)\n"
        "    WHERE t.id = r.id AND t.fence = r.fence AND t.state = 1\n"
        "    RETURNING t.id, t.fence, t.queue",
        "AS r(id, fence, eta, error, traceback)\n"
        "    WHERE t.id = r.id AND t.state = 1\n"
        "    RETURNING t.id, r.fence, t.queue",
        _fence("postgres"),
    ),
    Mutant(
        "postgres-release-ignores-token",
        "a stale claim cannot release a task (PostgreSQL, no key)",
        _POSTGRES_SQL,
        "AS r(id, fence, delay), now\n"
        "    WHERE t.id = r.id AND t.fence = r.fence AND t.state = 1\n"
        "    RETURNING t.id, t.fence, t.queue",
        "AS r(id, fence, delay), now\n"
        "    WHERE t.id = r.id AND t.state = 1\n"
        "    RETURNING t.id, r.fence, t.queue",
        _fence("postgres"),
    ),
    Mutant(
        "postgres-extend-ignores-token",
        "a stale claim cannot extend its lease (PostgreSQL)",
        _POSTGRES_SQL,
        "WHERE t.id = c.id AND t.fence = c.fence AND t.state = 1\n"
        "  AND (t.concurrency_key IS NULL\n"
        "       OR t.lease_until > (extract(epoch FROM clock_timestamp())::float8))\n"
        "RETURNING t.id, t.fence, t.cancel_requested",
        "WHERE t.id = c.id AND t.state = 1\n"
        "  AND (t.concurrency_key IS NULL\n"
        "       OR t.lease_until > (extract(epoch FROM clock_timestamp())::float8))\n"
        "RETURNING t.id, c.fence, t.cancel_requested",
        _fence("postgres"),
    ),
    # Redis: the settle script's check, per kind of entry, and the extend script's.
    *(
        Mutant(
            f"redis-{name}-ignores-token",
            f"a stale claim cannot {verb} a task (Redis, no key)",
            f"{_REDIS_LUA}/settle.lua",
            "local ok = h[1] == '1' and h[2] == ARGV[i + 2]\n",
            "local ok = h[1] == '1' and (h[2] == ARGV[i + 2]"
            f" or (kind == '{kind}' and not h[5]))\n",
            _fence("redis"),
        )
        for name, verb, kind in (
            ("finish", "finish", "F"),
            ("retry", "reschedule", "R"),
            ("release", "release", "L"),
        )
    ),
    Mutant(
        "redis-extend-ignores-token",
        "a stale claim cannot extend its lease (Redis)",
        f"{_REDIS_LUA}/extend.lua",
        "if h[1] == '1' and h[2] == ARGV[i + 1] and not",
        "if h[1] == '1' and not",
        _fence("redis"),
    ),
    # NATS: the fenced write's check, per builder.
    *(
        Mutant(
            f"nats-{name}-ignores-token",
            f"a stale claim cannot {verb} a task (NATS, no key)",
            _NATS_SETTLE,
            'if rec is None or rec[STATE] != "running" or rec.get(FENCE) != ref.fencing_token:',
            'if rec is None or rec[STATE] != "running" or (rec.get(FENCE) != ref.fencing_token'
            f' and getattr(build[i], "__name__", "") != "{builder}"):',
            _fence("nats"),
        )
        for name, verb, builder in (
            ("finish", "finish", "finish"),
            ("retry", "reschedule", "reschedule"),
            ("release", "release", "release"),
            ("extend", "extend the lease of", "extend"),
        )
    ),
    # Memory (the reference): a settlement found by id alone.
    *(
        Mutant(
            f"memory-{name}-ignores-token",
            f"a stale claim cannot {verb} a task (memory, no key)",
            _MEMORY,
            "            rec = self._current(item.claim)\n",
            "            rec = self._tasks.get(item.claim.task_id)\n"
            f"            if not isinstance(item, {cls}) or rec is None"
            " or rec.status is not TaskStatus.RUNNING:\n"
            "                rec = self._current(item.claim)\n",
            _fence("memory"),
        )
        for name, verb, cls in (
            ("finish", "finish", "Finish"),
            ("retry", "reschedule", "Reschedule"),
            ("release", "release", "Release"),
        )
    ),
    Mutant(
        "memory-extend-ignores-token",
        "a stale claim cannot extend its lease (memory)",
        _MEMORY,
        "        for ref in claims:\n            rec = self._current(ref)\n",
        "        for ref in claims:\n"
        "            rec = self._tasks.get(ref.task_id)\n"
        "            if rec is not None and rec.status is not TaskStatus.RUNNING:\n"
        "                rec = None\n",
        _fence("memory"),
    ),
]

_CRON_TEST = "tests/conformance/test_backend_steps.py"


def _cron(backend: str) -> tuple[str, ...]:
    return (f"{_CRON_TEST}::test_advance_cron_is_a_compare_and_set[{backend}]",)


CRON: list[Mutant] = [
    Mutant(
        "sqlite-cron-cas-always-succeeds",
        "a cron tick is advanced by one worker only (SQLite)",
        _SQLITE,
        '"UPDATE sitq_crons SET last_tick = ? WHERE name = ? AND last_tick = ?"',
        '"UPDATE sitq_crons SET last_tick = ? WHERE name = ? AND (last_tick = ? OR 1 = 1)"',
        _cron("sqlite"),
    ),
    Mutant(
        "postgres-cron-cas-always-succeeds",
        "a cron tick is advanced by one worker only (PostgreSQL)",
        _POSTGRES_SQL,
        'UPDATE "{schema}".crons SET last_tick = $3 WHERE name = $1 AND last_tick = $2',
        'UPDATE "{schema}".crons SET last_tick = $3 WHERE name = $1 AND (last_tick = $2 OR true)',
        _cron("postgres"),
    ),
    Mutant(
        "redis-cron-cas-always-succeeds",
        "a cron tick is advanced by one worker only (Redis)",
        f"{_REDIS_LUA}/cron_advance.lua",
        "if not last or tonumber(last) ~= tonumber(ARGV[2]) then return 0 end",
        "if not last then return 0 end",
        _cron("redis"),
    ),
    Mutant(
        "nats-cron-cas-always-succeeds",
        "a cron tick is advanced by one worker only (NATS)",
        _NATS_CRON,
        "if entry is None or entry.head is None or entry.head.get(CRON_TICK) != expected:",
        "if entry is None or entry.head is None:",
        _cron("nats"),
    ),
    Mutant(
        "memory-cron-cas-always-succeeds",
        "a cron tick is advanced by one worker only (memory)",
        _MEMORY,
        "if old is None or old.last_tick != expected:",
        "if old is None:",
        _cron("memory"),
    ),
]

ENGINE: list[Mutant] = [
    Mutant(
        "max-deliveries-ignored",
        "a task that keeps killing its worker is failed after max_deliveries",
        "src/sitq/worker.py",
        "if lost >= opts.max_deliveries:",
        "if False and lost >= opts.max_deliveries:",
        ("tests/conformance/test_at_least_once.py",),
        pytest_args=("-k", "keeps_killing and sqlite"),
    ),
    Mutant(
        "purge-loop-off",
        "a worker removes expired results (the purge loop)",
        "src/sitq/worker.py",
        "removed = await self.backend.purge_expired(self._clock())",
        "removed = 0",
        ("tests/conformance/test_purge_loop.py",),
        pytest_args=("-k", "memory or sqlite"),
    ),
]

_ACROSS_QUEUES = "tests/conformance/test_explicit_ids_across_queues.py"

EXPLICIT_IDS: list[Mutant] = [
    Mutant(
        "redis-explicit-id-unchecked",
        "an explicit id names one task across queues (Redis: the index written without its check)",
        f"{_REDIS_LUA}/lib/explicit.lua",
        "if owner and owner ~= queue and redis.call('EXISTS', queue_key(owner, 't:' .. id)) == 1"
        " then",
        "if false then",
        (_ACROSS_QUEUES,),
        pytest_args=("-k", "redis and not cluster"),
    ),
    Mutant(
        "redis-cluster-explicit-id-unfenced",
        "an explicit id names one task across queues (Redis Cluster: a fenced claim still stores)",
        f"{_REDIS_LUA}/lib/explicit.lua",
        "  elseif redis.call('SISMEMBER', queue_key(queue, 'f:' .. id), token) == 1 then",
        "  elseif false then",
        (_ACROSS_QUEUES,),
        pytest_args=("-m", "cluster", "-k", "redis-cluster"),
    ),
]

PUSH: list[Mutant] = [
    Mutant(
        "redis-pubsub-off",
        "push wakes idle workers and result waiters (Redis pub/sub listener off)",
        _REDIS_PUBSUB,
        '        if self._task is None and not self._closing and self._client() is not None:\n            self._task = asyncio.create_task(self._listen(), name="sitq-redis-pubsub")',
        '        if False:\n            self._task = asyncio.create_task(self._listen(), name="sitq-redis-pubsub")',
        ("tests/conformance/test_push_wakeups.py",),
        pytest_args=("-k", "redis"),
    ),
    Mutant(
        "redis-listener-no-reconnect",
        "push comes back after the pub/sub connection is cut (Redis)",
        _REDIS_PUBSUB,
        "            if self._closing:\n                break\n            await asyncio.sleep(delay)\n            delay = min(delay * 2, 2.0)",
        "            break",
        ("tests/conformance/test_push_wakeups.py",),
        pytest_args=("-k", "redis and cut"),
    ),
    Mutant(
        "pg-listen-off",
        "push wakes idle workers and result waiters (PostgreSQL LISTEN off)",
        _POSTGRES,
        "        if self._listener_task is None and not self._closing:\n            self._listening = asyncio.Event()",
        "        if False:\n            self._listening = asyncio.Event()",
        ("tests/conformance/test_push_wakeups.py",),
        pytest_args=("-k", "postgres"),
    ),
    Mutant(
        "pg-listener-no-reconnect",
        "push comes back after the LISTEN connection is cut (PostgreSQL)",
        _POSTGRES,
        "            self._signal_all()\n            await asyncio.sleep(delay)\n            delay = min(delay * 2, 5.0)",
        "            self._signal_all()\n            return",
        ("tests/conformance/test_push_wakeups.py",),
        pytest_args=("-k", "postgres and cut"),
    ),
    Mutant(
        "sqlite-inotify-off",
        "push wakes idle workers and result waiters (SQLite inotify off)",
        _SQLITE,
        'self._watch = watch_directory(directory, frozenset({base, base + "-wal"}))',
        "self._watch = None",
        ("tests/conformance/test_push_wakeups.py",),
        pytest_args=("-k", "sqlite"),
    ),
    Mutant(
        "nats-long-poll-off",
        "push wakes an idle worker (NATS long-polling pull request off)",
        _NATS_CONSUMERS,
        "                await nc.publish(consumer.next_subject, body, reply=consumer.poll_inbox)",
        "                pass",
        ("tests/conformance/test_push_wakeups.py",),
        pytest_args=("-k", "nats"),
    ),
    Mutant(
        "nats-kv-watch-off",
        "push wakes a result waiter (NATS key-value watch off)",
        _NATS,
        "                event.set()  # finished (or deleted): read it",
        "                pass",
        ("tests/conformance/test_push_wakeups.py",),
        pytest_args=("-k", "nats"),
    ),
    Mutant(
        "memory-enqueue-no-wake",
        "an enqueue wakes an idle worker (memory)",
        "src/sitq/backends/memory.py",
        "            heapq.heappush(self._scheduled, (rec.eta, rec.seq, rec.task.id))\n        assert self._work is not None\n        self._work.set()",
        "            heapq.heappush(self._scheduled, (rec.eta, rec.seq, rec.task.id))",
        ("tests/conformance/test_push_wakeups.py",),
        pytest_args=("-k", "memory"),
    ),
]

IDLE: list[Mutant] = [
    Mutant(
        "engine-idle-5ms",
        "an idle worker does not poll (the engine polls every 5 ms)",
        "src/sitq/worker.py",
        "await self._idle(self.poll_interval, wait_for_work=True)",
        "await self._idle(0.005, wait_for_work=True)",
        ("tests/conformance/test_no_busy_waiting.py",),
    ),
    Mutant(
        "async-worker-idle-5ms",
        "an idle AsyncWorker does not poll (5 ms)",
        "src/sitq/worker.py",
        'self.poll_interval = check_seconds("poll_interval", poll_interval, allow_inf=True)',
        'self.poll_interval = 0.005 if self.executor_class.__name__ == "AsyncExecutor" else check_seconds("poll_interval", poll_interval, allow_inf=True)',
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "async"),
    ),
    Mutant(
        "thread-worker-idle-5ms",
        "an idle ThreadWorker does not poll (5 ms)",
        "src/sitq/worker.py",
        'self.poll_interval = check_seconds("poll_interval", poll_interval, allow_inf=True)',
        'self.poll_interval = 0.005 if self.executor_class.__name__ == "ThreadExecutor" else check_seconds("poll_interval", poll_interval, allow_inf=True)',
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "thread"),
    ),
    Mutant(
        "process-worker-idle-5ms",
        "an idle ProcessWorker does not poll (5 ms)",
        "src/sitq/worker.py",
        'self.poll_interval = check_seconds("poll_interval", poll_interval, allow_inf=True)',
        'self.poll_interval = 0.005 if self.executor_class.__name__ == "ProcessExecutor" else check_seconds("poll_interval", poll_interval, allow_inf=True)',
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "process"),
    ),
    Mutant(
        "thread-pool-polls-5ms",
        "an idle ThreadWorker's threads do not poll",
        "src/sitq/executors.py",
        '    _thread_name = "sitq-thread"\n',
        '    _thread_name = "sitq-thread"\n\n    async def start(self) -> None:\n        await super().start()\n\n        def poll() -> None:\n            while True:\n                time.sleep(0.005)\n\n        threading.Thread(target=poll, daemon=True).start()\n',
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "thread"),
    ),
    Mutant(
        "child-polls-5ms",
        "an idle ProcessWorker's children do not poll",
        "src/sitq/_child.py",
        "    while (header := read_frame(requests)) is not None:",
        "    import threading as _th, time as _tm\n    _th.Thread(target=lambda: [_tm.sleep(0.005) for _ in iter(int, 1)], daemon=True).start()\n    while (header := read_frame(requests)) is not None:",
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "process"),
    ),
    Mutant(
        "sqlite-wait-5ms",
        "an idle worker does not poll (SQLite wait of 5 ms)",
        _SQLITE,
        "        if self._watch is None:\n            timeout = min(timeout, 0.05)",
        "        if True:\n            timeout = min(timeout, 0.005)",
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "sqlite"),
    ),
    Mutant(
        "redis-wait-5ms",
        "an idle worker does not poll (Redis wait of 5 ms)",
        _REDIS,
        "        return 1.0 if self._listener.listening else 0.1",
        "        return 0.005",
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "redis"),
    ),
    Mutant(
        "postgres-wait-5ms",
        "an idle worker does not poll (PostgreSQL wait of 5 ms)",
        _POSTGRES,
        "        return 1.0 if self._listening.is_set() else 0.1",
        "        return 0.005",
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "postgres"),
    ),
    Mutant(
        "nats-wait-5ms",
        "an idle worker does not poll (NATS wait of 5 ms)",
        _NATS,
        "await wait_on(self._consumers.work, timeout)",
        "await wait_on(self._consumers.work, min(timeout, 0.005))",
        ("tests/conformance/test_no_busy_waiting.py",),
        pytest_args=("-k", "nats"),
    ),
]

KINDS: list[Mutant] = [
    Mutant(
        "cli-kind-ignored",
        "sitq worker --kind runs that kind of worker",
        "src/sitq/cli/_worker.py",
        "kind = WORKER_KINDS[args.kind]",
        'kind = WORKER_KINDS["async"]',
        ("tests/conformance/test_at_least_once.py", "tests/conformance/test_many_workers.py"),
        pytest_args=("-k", "killed_mid or many"),
    ),
]

_TRACING_TEST = "tests/integration/test_tracing.py"

TRACES: list[Mutant] = [
    Mutant(
        "trace-context-not-stored",
        "an enqueue stores its span's context with the task, and the run is its child",
        "src/sitq/queue.py",
        "ids = await self._store(view, calls, eta, send.trace)",
        "ids = await self._store(view, calls, eta, None)",
        (_TRACING_TEST,),
        pytest_args=("-k", "worker_process_make_one_trace and sqlite"),
    ),
    Mutant(
        "task-span-not-current",
        "the task's span is current while it runs (its own enqueues continue the trace)",
        "src/sitq/worker.py",
        "                with trace:\n",
        "                if True:\n",
        (_TRACING_TEST,),
        pytest_args=("-k", "continues and not process"),
    ),
    Mutant(
        "task-span-not-sent-to-child",
        "a worker process runs its task in the parent's span",
        "src/sitq/_procpool.py",
        "encode_context(context, tracing.current_carrier())",
        "encode_context(context, None)",
        (_TRACING_TEST,),
        pytest_args=("-k", "continues and process"),
    ),
]

MUTANTS: list[Mutant] = [
    *FENCING,
    *CRON,
    *ENGINE,
    *EXPLICIT_IDS,
    *PUSH,
    *IDLE,
    *KINDS,
    *TRACES,
]
