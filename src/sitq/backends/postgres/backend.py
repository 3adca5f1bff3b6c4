"""The PostgreSQL backend, on asyncpg: many workers on many hosts share one database.

Design:

* Two tables in the backend's own schema: ``tasks`` holds only live tasks (pending and running)
  and ``results`` the finished ones, so the table that claims scan stays small however many
  results are kept; claims read a partial index of due tasks.
* A claim is one statement: ``SELECT ... FOR UPDATE SKIP LOCKED`` of up to *n* due tasks (and of
  running tasks whose lease expired), updated in place with a new lease, owner and fencing token.
  Settling a batch (finish, retry, release) is one statement too; a finish moves the row from
  ``tasks`` to ``results`` only if its fencing token is still current.
* Tasks with a concurrency key: while any are due on the claimed queues, claims go through the
  ``claim_keyed()`` function (still one round trip), which counts and claims each key under a
  transaction-level advisory lock of that key; see migrations/0002_crons_locks_keys.sql.
  Settling a keyed task notifies its queue's work channel, so a waiting worker takes the freed
  slot.
* Cron schedules (``crons``) and locks (``locks``, expiry by the server's ``now()``) are one
  row each, changed by single conditional statements; so are worker records (``workers``).
* Operator steps: a listing page is one statement through an index per kind of state
  (``listing.py``, migrations/0003_operating.sql); a requeue moves a failed or cancelled
  result, which keeps its payload, back to ``tasks`` in one statement that notifies the work
  channel; progress is stored on the running row, fenced by the claim's token.
* Leases and ``enqueued_at``/``started_at``/``finished_at`` use the server's clock, so workers on
  hosts with skewed clocks agree on who holds a task.
* The statements that make tasks due ``NOTIFY`` a work channel, and those that finish tasks a
  done channel with the finished ids; idle workers and ``get_result`` waiters ``LISTEN``
  on one connection per backend object, re-established if it drops, with a bounded fallback
  poll. Notifications are sent at commit, so a task enqueued in the caller's own transaction
  (``queue.options(connection=conn)``, on an asyncpg or a psycopg 3 connection: ``_psycopg.py``)
  wakes workers only once it exists.
* The schema is created and migrated on ``connect()`` under a transaction-level advisory lock,
  so ten workers connecting at once apply each migration (``migrations/NNNN_*.sql``) exactly
  once. The statements are in ``queries.sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from sitq.backends import redact_url, require
from sitq.backends._migrations import Migration, Migrations, load_queries, with_schema
from sitq.backends._options import UrlOptions, as_int, as_seconds, as_str
from sitq.backends._waiting import ChangeSignal, Polls, ResultWaiters, wait_for_final, wait_on
from sitq.backends.base import STATUS_CODE, Backend, stats_from_counts
from sitq.backends.postgres import _move, _psycopg
from sitq.backends.postgres._listing import ListingStatements, page_of, page_query, snapshot
from sitq.errors import BackendError, ConfigurationError, check_seconds
from sitq.models import (
    CancelOutcome,
    Claim,
    ClaimRef,
    CronRecord,
    Finish,
    HeldTask,
    LeaseState,
    NewTask,
    Progress,
    QueueStats,
    Release,
    ReplaceOutcome,
    RequeueOutcome,
    Reschedule,
    Settlement,
    SnapshotPage,
    StoredTask,
    TaskSnapshot,
    TaskStatus,
    WorkerRecord,
)

log = logging.getLogger("sitq.postgres")
T = TypeVar("T")

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_COPY_THRESHOLD = 64
# A cancel runs again only when the task changed state while the statement waited for its row;
# this bounds the runs for a task that keeps changing (in practice one or two).
_CANCEL_ATTEMPTS = 20
_COPY_COLUMNS = [
    "id",
    "queue",
    "priority",
    "payload",
    "options",
    "result_ttl",
    "concurrency_key",
    "concurrency_limit",
    "function",
]
_SYNCHRONOUS_COMMIT = ("on", "off", "local", "remote_write", "remote_apply")

# Each migration (migrations/NNNN_*.sql) runs once, in order, inside the advisory-locked
# transaction of connect(); schema_version lists those applied.
_MIGRATIONS = Migrations(__package__ or "sitq.backends.postgres", "migrations")
_QUERIES = load_queries(__package__ or "sitq.backends.postgres", "queries.sql")


def _pg_errors() -> tuple[type[BaseException], ...]:
    asyncpg = require("asyncpg", "postgres", "PostgresBackend")
    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


_URL_OPTIONS = {
    "schema": as_str,
    "synchronous_commit": as_str,
    "min_pool_size": as_int,
    "max_pool_size": as_int,
    "connect_timeout": as_seconds,
}


class PostgresBackend(Backend):
    """Tasks in PostgreSQL, in the schema ``schema`` (created on ``connect()``).

    ``dsn`` is any libpq/asyncpg connection string (``postgresql://user@host:5432/db``).
    ``synchronous_commit`` is PostgreSQL's setting for sitq's connections: ``"on"`` (the
    default) makes every enqueue survive a crash of the server itself; ``"off"`` is about 1.5
    times faster per single enqueue, and a server crash (not a restart) may lose the last
    fraction of a second of enqueues.
    ``min_pool_size``/``max_pool_size`` size the connection pool; a listening connection for
    notifications comes on top, opened on first wait.
    """

    scheme = ("postgresql", "postgres")

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "sitq",
        min_pool_size: int = 1,
        max_pool_size: int = 10,
        connect_timeout: float = 10.0,
        synchronous_commit: str = "on",
    ) -> None:
        self._asyncpg = require("asyncpg", "postgres", "PostgresBackend")
        if not isinstance(dsn, str) or not dsn:
            raise ConfigurationError(f"PostgresBackend needs a DSN string, not {dsn!r}")
        if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(
                f"schema={schema!r} is not valid: use 1-40 lowercase letters, digits or '_', "
                "starting with a letter or '_'"
            )
        if not 1 <= min_pool_size <= max_pool_size:
            raise ConfigurationError(
                f"pool sizes must satisfy 1 <= min_pool_size <= max_pool_size, got "
                f"{min_pool_size} and {max_pool_size}"
            )
        check_seconds("connect_timeout", connect_timeout)
        if synchronous_commit not in _SYNCHRONOUS_COMMIT:
            raise ConfigurationError(
                f"synchronous_commit={synchronous_commit!r}: use one of "
                f"{', '.join(_SYNCHRONOUS_COMMIT)}"
            )
        self.synchronous_commit = synchronous_commit
        self.dsn = dsn
        self.schema = schema
        self.min_pool_size = min_pool_size
        self.max_pool_size = max_pool_size
        self.connect_timeout = float(connect_timeout)
        self._work_channel = f"sitq_work_{schema}"
        self._done_channel = f"sitq_done_{schema}"
        self._pool: Any = None
        self._direct: Any = None
        self._direct_busy = False
        self._direct_opening = False
        self._background: set[asyncio.Task[None]] = set()
        self._listener: Any = None
        self._listener_task: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._changes = ChangeSignal()
        self._waiters = ResultWaiters()
        # Queue sets on which keyed tasks were due at the last claim.
        self._keyed_queues: set[tuple[str, ...]] = set()
        self._closing = False
        self._sql = _Statements(schema)
        self._move_sql = _move.MoveStatements(schema)

    @classmethod
    def from_url(cls, url: str) -> PostgresBackend:
        """A backend from ``postgresql://...?schema=jobs&max_pool_size=20``; other query
        parameters (``sslmode``, ...) go to the driver."""
        options = UrlOptions(url, _URL_OPTIONS, backend="PostgreSQL")
        return cls(options.url_without_options(scheme="postgresql"), **options.options)

    def describe(self) -> str:
        """The server and schema, without a password."""
        return f"{redact_url(self.dsn)} (schema {self.schema})"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""
        return self._pool is not None

    async def connect(self) -> None:
        """Open the pool and create or migrate the schema (once, however many connect)."""
        if self._pool is not None:
            return
        self._closing = False
        try:
            pool = await self._asyncpg.create_pool(
                self.dsn,
                min_size=self.min_pool_size,
                max_size=self.max_pool_size,
                timeout=self.connect_timeout,
                server_settings=self._server_settings(),
                reset=_reset_connection,
            )
        except _pg_errors() as exc:
            raise BackendError(f"cannot connect to PostgreSQL at {self.describe()}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except _pg_errors() as exc:
            await pool.close()
            raise BackendError(f"PostgreSQL schema setup failed: {exc}") from exc
        self._pool = pool
        await self._open_direct()

    def _server_settings(self) -> dict[str, str]:
        return {
            "application_name": f"sitq:{self.schema}",
            "synchronous_commit": self.synchronous_commit,
            # The keyed claim relies on each statement taking a fresh snapshot.
            "default_transaction_isolation": "read committed",
            # Every statement is a short read or write through indexes. The planner starts JIT
            # compilation by its cost estimate, which a generic plan over a large table can
            # pass (a listing page of every queue beside a million results: 13 ms of JIT
            # for 1 ms of work); it never pays off here.
            "jit": "off",
        }

    async def _open_direct(self) -> None:
        # One connection of its own, outside the pool, for whoever comes first: a pool round
        # (acquire, release) costs about as much as a simple statement.
        self._direct_opening = True
        try:
            self._direct = await self._asyncpg.connect(
                self.dsn, timeout=self.connect_timeout, server_settings=self._server_settings()
            )
        except Exception as exc:
            log.warning("PostgreSQL: cannot open a connection (%s); using the pool only", exc)
        finally:
            self._direct_opening = False
        if self._pool is None and self._direct is not None:  # closed meanwhile
            self._direct.terminate()
            self._direct = None

    async def _migrate(self, conn: Any) -> None:
        s = f'"{self.schema}"'
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"sitq:{self.schema}")
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {s}.schema_version ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            current = await conn.fetchval(
                f"SELECT coalesce(max(version), 0) FROM {s}.schema_version"
            )

            async def run(step: Migration) -> None:
                await conn.execute(with_schema(step.sql, self.schema))
                await conn.execute(
                    f"INSERT INTO {s}.schema_version (version) VALUES ($1)", step.version
                )

            await _MIGRATIONS.apply_async(
                current, f"PostgreSQL schema {self.schema!r} is at version", run
            )

    def detach(self) -> None:
        """Forget the pool, the kept connection and the listener of an event loop that has
        ended (their sockets close with the process), ready for ``connect()`` on this one."""
        for conn in (self._pool, self._direct, self._listener):
            if conn is not None:
                with contextlib.suppress(Exception):  # the loop is closed: best effort
                    conn.terminate()
        self._pool = self._direct = self._listener = None
        self._listener_task = None
        self._background = set()
        self._direct_busy = self._direct_opening = False
        self._listening = asyncio.Event()
        self._changes = ChangeSignal()
        self._waiters = ResultWaiters()

    async def close(self) -> None:
        """Close the pool and the listening connection; wake every waiter. Idempotent."""
        pool, self._pool = self._pool, None
        direct, self._direct = self._direct, None
        self._closing = True
        task, self._listener_task = self._listener_task, None
        for pending in [task, *self._background]:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
        if self._direct is not None:  # opened by a background task just before it stopped
            direct = direct or self._direct
            self._direct = None
        self._signal_all()
        if direct is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(direct.close(), 5)
            direct.terminate()
        if pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)
            pool.terminate()

    # -- plumbing ---------------------------------------------------------------------------

    async def _call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        pool = self._pool
        if pool is None:
            raise BackendError("PostgresBackend is not connected: call `await backend.connect()`")
        try:
            direct = self._direct
            if direct is not None and not self._direct_busy and not direct.is_closed():
                self._direct_busy = True
                done = False
                try:
                    result = await fn(direct)
                    done = True
                    return result
                finally:
                    self._direct_busy = False
                    if not done:
                        # An error or a cancellation can leave the connection in the middle of
                        # an operation: drop it and open a fresh one in the background.
                        self._direct = None
                        direct.terminate()
                        self._reopen_direct()
            if self._direct is None or self._direct.is_closed():
                self._reopen_direct()
            async with pool.acquire() as conn:
                return await fn(conn)
        except Exception as exc:  # the driver raises more than its documented error classes
            raise BackendError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc

    def _reopen_direct(self) -> None:
        if not self._direct_opening and self._pool is not None and not self._closing:
            self._direct = None
            self._direct_opening = True
            self._background.add(task := asyncio.create_task(self._open_direct()))
            task.add_done_callback(self._background.discard)

    def _signal_all(self) -> None:
        self._changes.signal()
        self._waiters.wake_all()

    def _on_work(self, *_: Any) -> None:
        self._changes.signal()

    def _on_done(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == "*":
            self._waiters.wake_all()
        else:
            self._waiters.finished(payload.split(","))

    async def _ensure_listener(self) -> None:
        if self._listener_task is None and not self._closing:
            self._listening = asyncio.Event()
            self._listener_task = asyncio.create_task(self._listen(), name="sitq-pg-listen")
        # Until the first LISTEN is in place, waiters fall back to short polls.

    async def _listen(self) -> None:
        delay = 0.1
        while not self._closing:
            lost = asyncio.Event()
            conn = None
            try:
                conn = await self._asyncpg.connect(
                    self.dsn,
                    timeout=self.connect_timeout,
                    server_settings={"application_name": f"sitq-listen:{self.schema}"},
                )
                conn.add_termination_listener(functools.partial(_set_event, lost))
                await conn.add_listener(self._work_channel, self._on_work)
                await conn.add_listener(self._done_channel, self._on_done)
                self._listener = conn
                self._listening.set()
                delay = 0.1
                # Anything that happened while we were not listening must be looked at again.
                self._signal_all()
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 30)
                    if not lost.is_set() and conn.is_closed():
                        break
                    if not lost.is_set():
                        # A quiet connection may be dead without the client knowing.
                        await asyncio.wait_for(conn.execute("SELECT 1"), 10)
            except asyncio.CancelledError:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
                raise
            except Exception as exc:
                log.warning("PostgreSQL listening connection failed: %s; retrying", exc)
            self._listening.clear()
            self._listener = None
            if conn is not None:
                conn.terminate()
            self._signal_all()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _poll_cap(self) -> float:
        return 1.0 if self._listening.is_set() else 0.1

    # -- tasks ------------------------------------------------------------------------------

    def _enqueue_args(self, tasks: Sequence[NewTask]) -> list[Any]:
        return [
            [t.id for t in tasks],
            [t.queue for t in tasks],
            [t.priority for t in tasks],
            [t.eta for t in tasks],
            [t.payload for t in tasks],
            [t.options for t in tasks],
            [t.result_ttl for t in tasks],
            [t.concurrency_key for t in tasks],
            [t.concurrency_limit for t in tasks],
            [t.eta <= t.enqueued_at for t in tasks],
            [t.function for t in tasks],
        ]

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Insert tasks in one statement; an id still known is left alone."""
        return await self._call(lambda c: self._insert(c, tasks))

    def _insert_statement(self, tasks: Sequence[NewTask]) -> tuple[str, list[Any], bool]:
        """The statement that inserts ``tasks``, its arguments, and whether every task is
        stored for sure (fresh ids), so that its rows need not be read."""
        args = self._enqueue_args(tasks)
        if all(t.fresh_id for t in tasks):
            # Ids generated for these tasks cannot exist yet: no lookups needed.
            if len(tasks) == 1:
                return self._sql.enqueue_fresh_one, [a[0] for a in args], True
            return self._sql.enqueue_fresh, args, True
        return self._sql.enqueue, args, False

    @staticmethod
    def _stored(tasks: Sequence[NewTask], fresh: bool, rows: Sequence[Any]) -> list[bool]:
        if fresh:
            return [True] * len(tasks)
        stored = {r[0] for r in rows}
        return [t.id in stored for t in tasks]

    async def _insert(self, conn: Any, tasks: Sequence[NewTask]) -> list[bool]:
        if len(tasks) >= _COPY_THRESHOLD and all(
            t.fresh_id and t.eta <= t.enqueued_at for t in tasks
        ):
            return await self._copy(conn, tasks)
        sql, args, fresh = self._insert_statement(tasks)
        return self._stored(tasks, fresh, await conn.fetch(sql, *args))

    async def _copy(self, conn: Any, tasks: Sequence[NewTask]) -> list[bool]:
        # Binary COPY is the fastest way in for a large batch of new tasks due now; eta and
        # enqueued_at come from the server's clock through the columns' defaults.
        records = [
            (
                t.id,
                t.queue,
                t.priority,
                t.payload,
                t.options,
                t.result_ttl,
                t.concurrency_key,
                t.concurrency_limit,
                t.function,
            )
            for t in tasks
        ]
        async with conn.transaction():
            await conn.copy_records_to_table(
                "tasks", schema_name=self.schema, records=records, columns=_COPY_COLUMNS
            )
            for queue in sorted({t.queue for t in tasks}):
                await conn.execute("SELECT pg_notify($1, $2)", self._work_channel, queue)
        return [True] * len(tasks)

    async def enqueue_in_transaction(self, tasks: Sequence[NewTask], connection: Any) -> list[bool]:
        """Insert tasks on the caller's own connection, inside its transaction: they exist (and
        wake workers) only if that transaction commits.

        ``connection`` is an asyncpg connection, or a psycopg 3 (3.2 or newer) connection or
        cursor, sync or async. On psycopg the statements are the same as on asyncpg, a batch
        included (the binary COPY of large batches is asyncpg's only); a sync connection is
        used from a thread, so the event loop never waits on it.
        """
        if self._pool is None:
            raise BackendError("PostgresBackend is not connected: call `await backend.connect()`")
        kind, conn = _psycopg.connection_kind(connection, self._asyncpg)
        if kind == _psycopg.ASYNCPG:
            try:
                return await self._insert(conn, tasks)
            except _pg_errors() as exc:
                raise BackendError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        sql, args, fresh = self._insert_statement(tasks)
        try:
            rows = await _psycopg.fetch(kind, conn, sql, args)
        except _psycopg.errors() as exc:
            raise BackendError(f"PostgreSQL: {type(exc).__name__}: {exc}") from exc
        return self._stored(tasks, fresh, rows)

    async def enqueue_replacing(self, task: NewTask) -> ReplaceOutcome:
        """Store the task, or replace the pending row or the result of its id, in one
        transaction that locks the row it changes (see docs/backends/postgres.md, Debounce)."""
        sql = _replace_statements(self.schema)
        args = (
            task.id,
            task.priority,
            task.eta,
            task.payload,
            task.options,
            task.result_ttl,
            task.concurrency_key,
            task.concurrency_limit,
            task.function,
        )

        async def look(conn: Any) -> ReplaceOutcome | None:
            live = await conn.fetchrow(sql["replace_live"], task.id)
            if live is not None:
                if live[0] != task.queue:
                    return ReplaceOutcome.OTHER_QUEUE
                if live[1] != 0:
                    return ReplaceOutcome.RUNNING
                await conn.fetch(sql["replace_pending"], *args)
                return ReplaceOutcome.REPLACED_PENDING
            result = await conn.fetchrow(sql["replace_result"], task.id)
            kept = result is not None and bool(result[1])
            if result is not None and kept and result[0] != task.queue:
                return ReplaceOutcome.OTHER_QUEUE
            fence = (result[2] or 0) if result is not None and kept else 0
            if await conn.fetch(sql["replace_insert"], *args, task.queue, fence):
                return ReplaceOutcome.REPLACED_FINISHED if kept else ReplaceOutcome.STORED
            return None  # another step stored the id after this one looked

        async def put(conn: Any) -> ReplaceOutcome | None:
            transaction = conn.transaction()
            await transaction.start()
            try:
                outcome = await look(conn)
            except BaseException:
                await transaction.rollback()
                raise
            if outcome is None:
                await transaction.rollback()
            else:
                await transaction.commit()
            return outcome

        for _ in range(_REPLACE_TRIES):
            outcome = await self._call(put)
            if outcome is not None:
                return outcome
        raise BackendError(f"PostgreSQL: task {task.id!r} kept changing while it was replaced")

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Lock and take up to ``limit`` due tasks (expired leases first) in one statement."""
        self._changes.mark_claim()
        if limit <= 0:
            return []
        names = tuple(queues)
        rows: list[Any] = []
        if names not in self._keyed_queues:
            sql = self._sql.claim_one if len(names) == 1 else self._sql.claim_many
            queue_arg: Any = names[0] if len(names) == 1 else list(names)
            rows = await self._call(lambda c: c.fetch(sql, queue_arg, limit, lease, worker_id))
        if names in self._keyed_queues or (rows and rows[0]["keyed"]):
            # Keyed tasks are due on these queues: claim through the function that takes the
            # keys' locks, until it reports that none are left.
            rows = await self._call(
                lambda c: c.fetch(self._sql.claim_keyed, list(names), limit, lease, worker_id)
            )
            if rows and rows[0]["keyed"]:
                self._keyed_queues.add(names)
            else:
                self._keyed_queues.discard(names)
        rows = sorted(
            (r for r in rows if r["id"] is not None),
            key=lambda r: (-r["priority"], r["eta"], r["seq"]),
        )
        return [
            Claim(
                task_id=r["id"],
                queue=r["queue"],
                payload=r["payload"],
                options=r["options"],
                priority=r["priority"],
                fencing_token=r["fence"],
                attempts=r["attempts"],
                retries=r["retries"],
                enqueued_at=r["enqueued_at"],
                started_at=r["now"],
                result_ttl=r["result_ttl"],
                cancel_requested=r["cancel_requested"],
                function=r["function"],
            )
            for r in rows
        ]

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Extend current claims in one statement."""
        ids = [c.task_id for c in claims]
        fences = [c.fencing_token for c in claims]
        rows = await self._call(lambda c: c.fetch(self._sql.extend, ids, fences, lease))
        found = {(r["id"], r["fence"]): r["cancel_requested"] for r in rows}
        states = []
        for ref in claims:
            flag = found.get((ref.task_id, ref.fencing_token))
            if flag is None:
                states.append(LeaseState.LOST)
            else:
                states.append(LeaseState.CANCEL_REQUESTED if flag else LeaseState.HELD)
        return states

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply a batch of fenced settlements in one statement."""
        fin = [s for s in settlements if isinstance(s, Finish)]
        res = [s for s in settlements if isinstance(s, Reschedule)]
        rel = [s for s in settlements if isinstance(s, Release)]
        args = [
            [s.claim.task_id for s in fin],
            [s.claim.fencing_token for s in fin],
            [STATUS_CODE[s.status] for s in fin],
            [s.value for s in fin],
            [s.error for s in fin],
            [s.traceback for s in fin],
            [max(s.expires_at - s.finished_at, 0.0) for s in fin],
            [s.claim.task_id for s in res],
            [s.claim.fencing_token for s in res],
            [s.eta for s in res],
            [s.error for s in res],
            [s.traceback for s in res],
            [s.claim.task_id for s in rel],
            [s.claim.fencing_token for s in rel],
            [s.delay for s in rel],
        ]
        rows = await self._call(lambda c: c.fetch(self._sql.settle, *args))
        applied = {(r["kind"], r["id"], r["fence"]) for r in rows if r["kind"] != "n"}
        out = []
        for s in settlements:
            kind = "f" if isinstance(s, Finish) else "s" if isinstance(s, Reschedule) else "r"
            out.append((kind, s.claim.task_id, s.claim.fencing_token) in applied)
        return out

    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Cancel a pending task (moved to results as cancelled) or flag a running one.

        The statement reads and writes in one snapshot. A claim or a finish that commits
        while it waits for the task's row changes the row under it: the write then finds
        nothing to do, and the result a finish wrote is not in its snapshot. The statement
        says when it saw the task live yet changed nothing, and only then runs again, in a
        fresh snapshot that holds what was committed meanwhile.
        """
        for _ in range(_CANCEL_ATTEMPTS):
            row = await self._call(lambda c: c.fetchrow(self._sql.cancel, task_id))
            if row["cancelled"]:
                return CancelOutcome.CANCELLED
            if row["requested"]:
                return CancelOutcome.REQUESTED
            if row["finished"]:
                return CancelOutcome.ALREADY_FINISHED
            if not row["live"]:
                return CancelOutcome.NOT_FOUND
        raise BackendError(
            f"could not cancel task {task_id!r}: its state changed during each of "
            f"{_CANCEL_ATTEMPTS} attempts; try again"
        )

    async def get_task(self, task_id: str) -> TaskSnapshot | None:
        """Read one task from the live table or the results."""
        row = await self._call(lambda c: c.fetchrow(self._sql.get, task_id))
        return None if row is None else snapshot(row, row["value"])

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Wait for the done notification of this task (bounded polls as a fallback)."""
        await self._ensure_listener()
        with self._waiters.watch(task_id) as arm:
            return await wait_for_final(
                lambda: self.get_task(task_id),
                timeout,
                arm=arm,
                polls=Polls.every(self._poll_cap),
                is_open=lambda: self._pool is not None,
            )

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for a work notification, the next ETA or lease expiry, or ``timeout``."""
        await self._ensure_listener()
        changed = self._changes.since_claim()
        due = await self._call(lambda c: c.fetchval(self._sql.next_due, list(queues)))
        if due is not None:
            timeout = min(timeout, max(due, 0.0))
        timeout = min(timeout, self._poll_cap())
        if timeout <= 0:
            return
        await wait_on(changed, timeout)

    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Delete up to ``limit`` expired results (and expired worker records)."""
        status = await self._call(lambda c: c.execute(self._sql.purge, limit, now))
        return int(status.split()[-1])

    async def stats(self, now: float) -> list[QueueStats]:
        """Count tasks per queue and state."""
        rows = await self._call(lambda c: c.fetch(self._sql.stats))
        return stats_from_counts((r["queue"], r["kind"], r["n"]) for r in rows)

    # -- inspection and operator actions -----------------------------------------------------

    async def list_tasks(
        self, status: TaskStatus, queue: str | None, limit: int, after: str | None, now: float
    ) -> SnapshotPage:
        """One statement reads a page through an index (see ``listing.py``)."""
        sql, args = page_query(self._sql.listing, status, queue, limit, after)
        rows = await self._call(lambda c: c.fetch(sql, *args))
        return page_of(status, rows, limit)

    async def requeue(self, task_ids: Sequence[str], now: float) -> list[RequeueOutcome]:
        """Move failed and cancelled results back to pending, each at most once, in one
        statement that also wakes the workers of their queues."""
        ids = list(dict.fromkeys(task_ids))
        rows = await self._call(lambda c: c.fetch(self._sql.requeue, ids))
        found = {r["id"]: r for r in rows if r["id"] is not None}
        outcomes = []
        counted: set[str] = set()
        for task_id in task_ids:
            row = found[task_id]
            if row["requeued"] and task_id not in counted:
                counted.add(task_id)
                outcomes.append(RequeueOutcome.REQUEUED)
            elif row["known"] or row["requeued"]:
                outcomes.append(RequeueOutcome.REFUSED)
            else:
                outcomes.append(RequeueOutcome.NOT_FOUND)
        return outcomes

    async def purge_tasks(self, queue: str, status: TaskStatus, limit: int) -> int:
        """Delete up to ``limit`` tasks of the queue in one state; running ones never."""
        if status is TaskStatus.RUNNING:
            return 0
        if status is TaskStatus.PENDING:
            sql, args = self._sql.purge_pending, [queue, limit]
        else:
            sql, args = self._sql.purge_finished, [queue, STATUS_CODE[status], limit]
        result = await self._call(lambda c: c.execute(sql, *args))
        return int(result.split()[-1])

    async def save_progress(self, updates: Sequence[Progress]) -> None:
        """Store progress of the tasks whose claims are current, in one statement."""
        if not updates:
            return
        args = [
            [u.claim.task_id for u in updates],
            [u.claim.fencing_token for u in updates],
            [u.value for u in updates],
            [u.message for u in updates],
        ]
        await self._call(lambda c: c.execute(self._sql.save_progress, *args))

    async def hold(self, queues: Sequence[str], limit: int, holder: str) -> list[HeldTask]:
        """Hold tasks for a move, in one statement (see ``_move``)."""
        return await self._call(lambda c: _move.hold(c, self._move_sql, queues, limit, holder))

    async def put_stored(self, records: Sequence[StoredTask]) -> list[bool]:
        """Insert moved tasks in one transaction; an id still known is left alone."""
        return await self._call(lambda c: _move.put_stored(c, self._move_sql, records))

    async def drop_held(self, refs: Sequence[ClaimRef]) -> list[bool]:
        """Delete held tasks by their claims, in one statement."""
        return await self._call(lambda c: _move.drop_held(c, self._move_sql, refs))

    async def put_worker(self, record: WorkerRecord) -> None:
        """Insert or replace the worker's row."""
        sql, args = self._sql.put_worker, (record.worker_id, record.data, record.expires_at)
        await self._call(lambda c: c.execute(sql, *args))

    async def remove_worker(self, worker_id: str) -> None:
        """Delete the worker's row."""
        await self._call(lambda c: c.execute(self._sql.remove_worker, worker_id))

    async def list_workers(self, now: float) -> list[WorkerRecord]:
        """The unexpired rows, sorted by worker id (code point order, as Python sorts)."""
        rows = await self._call(lambda c: c.fetch(self._sql.list_workers, now))
        records = [WorkerRecord(r["worker_id"], r["data"], r["expires_at"]) for r in rows]
        return sorted(records, key=lambda r: r.worker_id)

    # -- cron -------------------------------------------------------------------------------

    async def put_cron(self, name: str, definition: bytes, start: float) -> None:
        """Create the schedule with ``last_tick = start``, or replace its definition only."""
        await self._call(lambda c: c.execute(self._sql.put_cron, name, definition, start))

    async def delete_cron(self, name: str) -> bool:
        """Delete the schedule; ``True`` if it existed."""
        return bool(await self._call(lambda c: c.fetchval(self._sql.delete_cron, name)))

    async def list_crons(self) -> list[CronRecord]:
        """Every schedule, sorted by name (code point order, as Python sorts)."""
        rows = await self._call(lambda c: c.fetch(self._sql.list_crons))
        records = [CronRecord(r["name"], r["definition"], r["last_tick"]) for r in rows]
        return sorted(records, key=lambda r: r.name)

    async def advance_cron(self, name: str, expected: float, tick: float) -> bool:
        """Compare-and-set ``last_tick`` in one statement (the row lock serializes workers)."""
        sql = self._sql.advance_cron
        return bool(await self._call(lambda c: c.fetchval(sql, name, expected, tick)))

    # -- locks ------------------------------------------------------------------------------

    async def acquire_lock(self, name: str, token: str, ttl: float) -> bool:
        """Insert the lock, or take it over if its TTL ran out (server clock); never waits."""
        sql = self._sql.acquire_lock
        return bool(await self._call(lambda c: c.fetchval(sql, name, token, ttl)))

    async def acquire_any_lock(
        self, names: Sequence[str], token: str, ttl: float
    ) -> tuple[str | None, float]:
        """Take the first lock not held (server clock), one statement per look; a look that
        another client beat to its lock looks again (at most once per lock)."""
        sql = self._sql.acquire_any_lock
        wanted = list(names)
        for _ in range(len(wanted)):
            row = await self._call(lambda c: c.fetchrow(sql, wanted, token, ttl))
            if row["taken"] is not None:
                return str(row["taken"]), 0.0
            if row["tried"] is None:
                return None, max(float(row["wait"] or 0.0), 0.0)
        return None, 0.0

    async def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Extend the lock to ``now + ttl`` if ``token`` holds it and its TTL has not run out."""
        sql = self._sql.extend_lock
        return bool(await self._call(lambda c: c.fetchval(sql, name, token, ttl)))

    async def release_lock(self, name: str, token: str) -> bool:
        """Delete the lock if ``token`` holds it; ``True`` if its TTL had not run out."""
        sql = self._sql.release_lock
        return bool(await self._call(lambda c: c.fetchval(sql, name, token)))


async def _reset_connection(conn: Any) -> None:
    # asyncpg's default reset costs a round trip per release (UNLISTEN, RESET ALL, ...); pool
    # connections only ever run single statements, so only an open transaction needs undoing.
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def _set_event(event: asyncio.Event, *_: Any) -> None:
    event.set()


_REPLACE_TRIES = 20
"""Looks ``enqueue_replacing`` takes at an id that other steps keep storing meanwhile."""


@functools.lru_cache(maxsize=16)
def _replace_statements(schema: str) -> dict[str, str]:
    """The ``replace_*`` statements of queries.sql for one schema."""
    return {
        name: with_schema(text, schema)
        for name, text in _QUERIES.items()
        if name.startswith("replace_")
    }


class _Statements:
    """The statements of queries.sql for one schema, built once."""

    def __init__(self, schema: str) -> None:
        sql = {name: with_schema(text, schema) for name, text in _QUERIES.items()}
        self.enqueue_fresh_one = sql["enqueue_fresh_one"]
        self.enqueue_fresh = sql["enqueue_fresh"]
        self.enqueue = sql["enqueue"]
        self.claim_one = sql["claim_one"]
        self.claim_many = sql["claim_many"]
        self.claim_keyed = sql["claim_keyed"]
        self.extend = sql["extend"]
        self.settle = sql["settle"]
        self.cancel = sql["cancel"]
        self.get = sql["get"]
        self.next_due = sql["next_due"]
        self.purge = sql["purge"]
        self.put_cron = sql["put_cron"]
        self.delete_cron = sql["delete_cron"]
        self.list_crons = sql["list_crons"]
        self.advance_cron = sql["advance_cron"]
        self.acquire_lock = sql["acquire_lock"]
        self.acquire_any_lock = sql["acquire_any_lock"]
        self.extend_lock = sql["extend_lock"]
        self.release_lock = sql["release_lock"]
        self.stats = sql["stats"]
        self.listing = ListingStatements(
            pending_queue=sql["list_pending_queue"],
            pending_all=sql["list_pending_all"],
            running_queue=sql["list_running_queue"],
            running_all=sql["list_running_all"],
            finished_queue=sql["list_finished_queue"],
            finished_all=sql["list_finished_all"],
        )
        self.requeue = sql["requeue"]
        self.purge_pending = sql["purge_pending"]
        self.purge_finished = sql["purge_finished"]
        self.save_progress = sql["save_progress"]
        self.put_worker = sql["put_worker"]
        self.remove_worker = sql["remove_worker"]
        self.list_workers = sql["list_workers"]
