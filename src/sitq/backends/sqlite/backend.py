"""The SQLite backend: the embedded default, one file, no server.

Design:

* WAL journal, so readers never block the writer; every write is one ``BEGIN IMMEDIATE``
  transaction, so two processes never both act on a stale snapshot (claims are atomic: a task
  is never handed out twice while its lease holds). ``synchronous=NORMAL`` by default: a
  committed task survives any process crash; pass ``synchronous="full"`` to also survive power
  loss at some cost in speed.
* All statements of one backend object run on one thread of their own, so the event loop never
  blocks on the file or on another process holding the write lock.
* One table of tasks; partial indexes keep only live rows in the claim paths, so claims stay fast
  however many finished rows wait for their results to expire.
* Concurrency keys are checked inside the claim's write transaction against a partial index of
  running keyed tasks. Tasks with a key have their own claim index; one whose key is full is
  parked (out of that index) until a task of its key settles, so blocked tasks are never walked
  over again and never hold back the tasks behind them.
* Cron schedules and locks are rows of two small tables (``sitq_crons``, ``sitq_locks``), each
  step one statement in a write transaction; lock TTLs run on this machine's clock.
* Worker records (``sitq_workers``) live in a second file beside the database,
  ``<database>-workers``, attached to every connection: heartbeats rewrite them every few
  seconds, and in the database file each rewrite would wake every idle worker and result
  waiter (see below) for nothing.
* Listings read a page of one status through an index in that status's order (see
  ``_listing``); a few partial indexes exist for them alone, and the claim path pays for them
  only where no existing index gives the order.
* No server means no push channel: on Linux, an inotify watch on the ``-wal`` file wakes idle
  workers and result waiters in every process the moment another process commits; elsewhere
  waiters poll with a short, growing interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import unquote

from sitq.backends._inotify import DirectoryWatch, watch_directory
from sitq.backends._migrations import Migration, Migrations, load_queries
from sitq.backends._options import UrlOptions, as_seconds, as_str
from sitq.backends._waiting import ChangeSignal, Polls, wait_for_final, wait_on
from sitq.backends.base import CODE_STATUS, STATUS_CODE, Backend, stats_from_counts, stats_kind
from sitq.backends.sqlite import _listing, _move
from sitq.backends.sqlite._ids import id_is_free
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

T = TypeVar("T")

_PENDING = STATUS_CODE[TaskStatus.PENDING]
_RUNNING = STATUS_CODE[TaskStatus.RUNNING]

# Seconds after a watched write at which waiters are woken again (see _on_watch_event): a
# writer descheduled between its two steps is caught by the later ones.
_ECHO_DELAYS = (0.001, 0.01, 0.1)

# The schema, one numbered file per version in schema/; PRAGMA user_version is the version.
_MIGRATIONS = Migrations(__package__ or "sitq.backends.sqlite", "schema")
SCHEMA_VERSION = _MIGRATIONS.latest


def _statements(script: str) -> list[str]:
    """The statements of a schema script, split where SQLite sees each one complete."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending)
            pending = ""
    if pending.strip():
        statements.append(pending)
    return statements


def _run_script(conn: sqlite3.Connection, step: Migration) -> None:
    # One statement at a time: executescript() would commit the migration's transaction.
    for statement in _statements(step.sql):
        conn.execute(statement)


_CLAIM_SET = """
    state = 1, attempts = attempts + 1, fence = fence + 1, lease_until = :lease_until,
    worker_id = :worker, started_at = :now, parked = 0, progress = NULL, progress_message = NULL
"""
_CLAIM_RETURNING = """
    RETURNING id, queue, payload, options, priority, fence, attempts, retries, enqueued_at,
              result_ttl, cancel_requested, eta, seq, function
"""
_QUERIES = load_queries(__package__ or "sitq.backends.sqlite", "queries.sql")
_DUE = _QUERIES["due"]
_KEYED_DUE = _QUERIES["keyed_due"]
_KEY_RUNNING = _QUERIES["key_running"]
_PARK = _QUERIES["park"]
_PARKED = _QUERIES["parked"]
_FINISH = _QUERIES["finish"]
_RESCHEDULE = _QUERIES["reschedule"]
_RELEASE = _QUERIES["release"]
_RELEASE_LATER = _QUERIES["release_later"]
_LOCKS_HELD = _QUERIES["locks_held"]
_TAKE_LOCK = _QUERIES["take_lock"]
_REQUEUE = _QUERIES["requeue"]
_PURGE_PENDING = _QUERIES["purge_pending"]
_PURGE_FINISHED = _QUERIES["purge_finished"]
_SAVE_PROGRESS = _QUERIES["save_progress"]
_PUT_WORKER = _QUERIES["put_worker"]
_LIST_WORKERS = _QUERIES["list_workers"]
_STATS_PENDING = _QUERIES["stats_pending"]
_STATS_RUNNING = _QUERIES["stats_running"]
_STATS_FINISHED = _QUERIES["stats_finished"]
_STATS_EXPIRED = _QUERIES["stats_expired"]
_REPLACE_FIND = _QUERIES["replace_find"]
_REPLACE_TASK = _QUERIES["replace_task"]
# Appended to a settlement: most tasks have no key, and only a miss reads the key back.
_UNKEYED = " AND concurrency_key IS NULL"
_KEYED = " AND concurrency_key IS NOT NULL RETURNING queue, concurrency_key"
# Rows one claim may park before it returns what it has: bounds how long a claim holds the
# write lock after a large backlog of one key arrived (the next claims park the rest).
_PARK_BUDGET = 2000
# Keyed rows read per look: more than a claim needs, so that a few blocked rows at the head
# rarely cost a second look.
_KEYED_PAGE = 64
_SYNCHRONOUS = ("off", "normal", "full", "extra")
# The file of worker records, beside the database (see the module docstring), and its table.
_WORKERS_SUFFIX = "-workers"
_WORKERS_TABLE = """
    CREATE TABLE IF NOT EXISTS sitq_live.sitq_workers (
        worker_id TEXT PRIMARY KEY,
        data BLOB NOT NULL,
        expires_at REAL NOT NULL
    ) WITHOUT ROWID
"""


class _KeySlots:
    """Running tasks per (queue, concurrency key) as one claim sees them: the count read in the
    claim's write transaction plus the tasks the claim hands out."""

    def __init__(self, conn: sqlite3.Connection, now: float) -> None:
        self.conn = conn
        self.now = now
        self.counts: dict[tuple[str, str], int] = {}
        self.budget = _PARK_BUDGET

    def admit(self, queue: str, key: str | None, cap: int | None) -> bool:
        """True, and count it, if a task with this key and limit may start now."""
        if key is None or cap is None:
            return True
        if type(cap) is not int:
            cap = 1  # a damaged row's unreadable limit counts as the strictest one
        n = self.counts.get((queue, key))
        if n is None:
            n = self.conn.execute(_KEY_RUNNING, (queue, key, self.now)).fetchone()[0]
        if n >= cap:
            self.counts[(queue, key)] = n
            return False
        self.counts[(queue, key)] = n + 1
        return True

    def candidates(self, queue: str, want: int) -> list[tuple[int, float, int, str, str]]:
        """Up to ``want`` due keyed tasks of ``queue`` that may start, in claim order, as
        ``(priority, eta, seq, queue, key)``; tasks found blocked are parked on the way."""
        picked: list[tuple[int, float, int, str, str]] = []
        taken: set[int] = set()
        while True:
            size = max(want, _KEYED_PAGE) + len(picked)
            full: set[str] = set()
            seen = 0
            cur = self.conn.execute(_KEYED_DUE, (queue, self.now, size))
            for priority, eta, seq, key, cap in cur:
                seen += 1
                if seq in taken:
                    continue
                if self.admit(queue, key, cap):
                    picked.append((priority, eta, seq, queue, key))
                    taken.add(seq)
                    if len(picked) == want:
                        break
                else:
                    full.add(key)
            cur.close()
            if not full:
                return picked
            for key in full:
                if self.budget <= 0:
                    break
                limit = self.counts[(queue, key)]
                parked = self.conn.execute(_PARK, (queue, key, self.now, limit, self.budget))
                self.budget -= parked.rowcount
            if len(picked) == want or seen < size or self.budget <= 0:
                return picked


def _claim_order(priority: Any, eta: Any, seq: int) -> tuple[int, int, float, int]:
    """The claim order of a row; a row whose priority or ETA is not a number (a damaged
    record, which the worker then fails as unreadable) comes first instead of breaking it."""
    if type(priority) is not int or type(eta) not in (int, float):
        return (0, 0, 0.0, seq)
    return (1, -priority, eta, seq)


def _unpark(conn: sqlite3.Connection, queue: str, key: str, now: float) -> None:
    """Make parked tasks of a key claimable again, as many as its free slots can start."""
    running = conn.execute(_KEY_RUNNING, (queue, key, now)).fetchone()[0]
    seqs: list[int] = []
    cur = conn.execute(_PARKED, (queue, key))
    for seq, cap in cur:
        if cap is not None and running >= cap:
            break
        seqs.append(seq)
        running += 1
    cur.close()
    if seqs:
        conn.execute(f"UPDATE sitq_tasks SET parked = 0 WHERE seq IN ({','.join(map(str, seqs))})")


class SQLiteBackend(Backend):
    """Tasks in one SQLite file, shared safely by any number of processes on one machine.

    ``db_path`` is the file (created if missing); ``busy_timeout`` is how long a statement
    waits for another process's write lock before failing with :class:`BackendError`.
    """

    scheme = ("sqlite",)

    def __init__(
        self,
        db_path: str | os.PathLike[str] = "sitq.db",
        *,
        synchronous: str = "normal",
        busy_timeout: float = 30.0,
    ) -> None:
        self.db_path = os.fspath(db_path)
        if not self.db_path or self.db_path == ":memory:" or os.path.isdir(self.db_path):
            raise ConfigurationError(
                "SQLiteBackend needs a file path (worker processes share the file); "
                "for an in-process queue use MemoryBackend()"
            )
        if synchronous.lower() not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"synchronous={synchronous!r}: use one of {', '.join(_SYNCHRONOUS)}"
            )
        self.synchronous = synchronous.lower()
        self.busy_timeout = check_seconds("busy_timeout", busy_timeout)
        self._conn: sqlite3.Connection | None = None
        self._fast: sqlite3.Connection | None = None
        self._fast_after = 0.0
        self._fast_writes = 0
        self._thread: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: DirectoryWatch | None = None
        self._changes = ChangeSignal()
        self._echo: asyncio.TimerHandle | None = None
        # Per queue list, the time of the last claim that handed out everything it could.
        self._claimed_all_at: dict[tuple[str, ...], float] = {}

    @classmethod
    def from_url(cls, url: str) -> SQLiteBackend:
        """A backend from ``sqlite:///relative.db`` or ``sqlite:////abs/path.db``, with the
        options ``synchronous`` and ``busy_timeout`` as query parameters."""
        options = UrlOptions(
            url, {"synchronous": as_str, "busy_timeout": as_seconds}, backend="sqlite"
        )
        options.refuse_others()
        if options.parts.netloc:
            raise ConfigurationError(
                f"{url!r}: a sqlite URL has no host; use sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        path = unquote(options.parts.path).removeprefix("/")
        if not path:
            raise ConfigurationError(f"{url!r} names no database file")
        return cls(path, **options.options)

    def describe(self) -> str:
        """The database file."""
        return f"sqlite:///{self.db_path}"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""
        return self._conn is not None

    async def connect(self) -> None:
        """Open the file, switch it to WAL, create the schema if missing, start watching."""
        if self._conn is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sitq-sqlite")
        try:
            self._conn = await self._loop.run_in_executor(self._thread, self._open)
        except BaseException:
            self._thread.shutdown(wait=False)
            self._thread = None
            raise
        self._fast = self._open_fast()
        directory = os.path.dirname(os.path.abspath(self.db_path))
        base = os.path.basename(self.db_path)
        self._watch = watch_directory(directory, frozenset({base, base + "-wal"}))
        if self._watch is not None:
            self._loop.add_reader(self._watch.fd, self._on_watch_event)

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.db_path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open SQLite database {self.db_path!r}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise BackendError(
                    f"SQLite database {self.db_path!r} cannot use WAL mode (got {mode!r}); "
                    "it must be on a local file system"
                )
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA temp_store=MEMORY")
            self._attach_workers(conn, setup=True)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            store = f"SQLite database {self.db_path!r} has schema version"
            if _MIGRATIONS.pending(version, store):  # raises if the file is newer than sitq
                self._migrate(conn, store)
        except sqlite3.Error as exc:
            conn.close()
            raise BackendError(f"SQLite {self.db_path!r}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _migrate(conn: sqlite3.Connection, store: str) -> None:
        # Under the write lock, so that of several processes opening an old file at once,
        # exactly one upgrades it and the others see the new version.
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version != _MIGRATIONS.latest:
                _MIGRATIONS.apply(version, store, lambda step: _run_script(conn, step))
                conn.execute(f"PRAGMA user_version={_MIGRATIONS.latest}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _attach_workers(self, conn: sqlite3.Connection, *, setup: bool = False) -> None:
        conn.execute("ATTACH DATABASE ? AS sitq_live", (self.db_path + _WORKERS_SUFFIX,))
        conn.execute(f"PRAGMA sitq_live.synchronous={self.synchronous}")
        if not setup:
            return
        # Switching a file to WAL takes its exclusive lock without waiting for a busy one, and
        # several processes may open a new store at once: whoever finds it locked tries again.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA sitq_live.journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    conn.execute("PRAGMA sitq_live.journal_mode=WAL")
                conn.execute(_WORKERS_TABLE)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)  # in the backend's thread, never the event loop

    def _open_fast(self) -> sqlite3.Connection | None:
        # A second connection used straight from the event loop: it never waits for a lock
        # (timeout 0) and never checkpoints, so a statement on it costs tens of microseconds
        # instead of a round trip to the thread. When it meets a lock, the thread's connection
        # (which waits) takes over.
        try:
            fast = sqlite3.connect(
                self.db_path, timeout=0, isolation_level=None, check_same_thread=False
            )
            fast.execute(f"PRAGMA synchronous={self.synchronous}")
            fast.execute("PRAGMA wal_autocheckpoint=0")
            fast.execute("PRAGMA temp_store=MEMORY")
            self._attach_workers(fast)
        except sqlite3.Error:
            return None
        return fast

    def detach(self) -> None:
        """Close the connections of an event loop that has ended (closing a SQLite connection
        is a local call, so nothing is left open), ready for ``connect()`` on the next one."""
        conn, thread, fast, watch = self._conn, self._thread, self._fast, self._watch
        self._conn = self._thread = self._fast = self._watch = self._echo = None
        self._changes = ChangeSignal()
        for closing in (fast, conn):
            if closing is not None:
                with contextlib.suppress(sqlite3.Error):
                    closing.close()
        if watch is not None:
            watch.close()
        if thread is not None:
            thread.shutdown(wait=False)

    async def close(self) -> None:
        """Close the file and wake every waiter. Idempotent."""
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            return
        self._conn = None
        self._thread = None
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        if self._watch is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._watch.fd)
            self._watch.close()
            self._watch = None
        if self._echo is not None:
            self._echo.cancel()
            self._echo = None
        self._signal_change()
        await asyncio.get_running_loop().run_in_executor(thread, conn.close)
        thread.shutdown(wait=True)

    def _on_watch_event(self) -> None:
        if self._watch is not None and self._watch.read_events():
            self._signal_change()
            # A commit writes its frames to the -wal file (the event) and then publishes them
            # in the -shm index, which inotify does not see: a reader woken in between reads
            # the store as it was and would sleep until its next poll. Wake everyone again
            # shortly after, by which time the commit is visible. Each write starts the
            # echoes over, so a later write is not left to an echo meant for an earlier one.
            if self._echo is not None:
                self._echo.cancel()
            if self._loop is not None:
                self._echo = self._loop.call_later(_ECHO_DELAYS[0], self._on_echo, 1)

    def _on_echo(self, step: int) -> None:
        self._echo = None
        self._signal_change()
        if step < len(_ECHO_DELAYS) and self._loop is not None and self._watch is not None:
            self._echo = self._loop.call_later(_ECHO_DELAYS[step], self._on_echo, step + 1)

    def _signal_change(self) -> None:
        self._changes.signal()

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(
        self, fn: Callable[[sqlite3.Connection], T], *, wrote: bool = False, slow: bool = False
    ) -> T:
        """Run ``fn`` on the fast connection, or on the backend's thread when that one meets
        a lock; ``slow`` (a statement whose cost grows with the store, such as a count of
        every task) always goes to the thread, so that it never holds up the event loop."""
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise BackendError(
                f"SQLiteBackend({self.db_path!r}) is not connected: call `await backend.connect()`"
            )
        fast = None if slow else self._fast
        if fast is not None and time.monotonic() >= self._fast_after:
            try:
                result = fn(fast)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise BackendError(f"SQLite {self.db_path!r}: {exc}") from exc
                # Another connection holds the write lock: wait for it in the thread, and send
                # the next statements there too for a moment rather than fail fast again.
                self._fast_after = time.monotonic() + 0.02
            except sqlite3.Error as exc:
                raise BackendError(f"SQLite {self.db_path!r}: {exc}") from exc
            else:
                if wrote:
                    self._signal_change()
                return result
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(thread, fn, conn)
        except sqlite3.Error as exc:
            raise BackendError(f"SQLite {self.db_path!r}: {exc}") from exc
        if wrote:
            self._signal_change()
        return result

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _write(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        if conn is self._fast:
            self._fast_writes += 1
            if self._fast_writes % 500 == 0 and self._thread is not None and self._conn:
                self._thread.submit(self._checkpoint, self._conn)
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    # -- tasks ------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Insert tasks in one transaction; an id still known is left alone."""
        rows = [
            (
                t.id,
                t.queue,
                t.priority,
                t.eta,
                t.payload,
                t.options,
                t.enqueued_at,
                t.result_ttl,
                t.concurrency_key,
                t.concurrency_limit,
                t.function,
            )
            for t in tasks
        ]
        sql = (
            "INSERT INTO sitq_tasks (id, queue, state, priority, eta, payload, options, "
            "enqueued_at, result_ttl, concurrency_key, concurrency_limit, function) "
            "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
        )

        def insert(conn: sqlite3.Connection) -> list[bool]:
            before = conn.total_changes
            conn.executemany(sql, rows)
            if conn.total_changes - before == len(rows):
                return [True] * len(rows)
            # Some ids existed: find which, replacing those whose results have expired.
            now = time.time()
            stored = []
            for row in rows:
                free = id_is_free(conn, row[0], now)
                if free:
                    conn.execute(sql, row)
                stored.append(free)
            return stored

        return await self._run(lambda c: self._write(c, insert), wrote=True)

    async def enqueue_replacing(self, task: NewTask) -> ReplaceOutcome:
        """Store the task, or replace the pending or finished row of its id, in one write
        transaction: a claim (also a write transaction) comes wholly before or after it."""
        params = {
            "id": task.id,
            "priority": task.priority,
            "eta": task.eta,
            "payload": task.payload,
            "options": task.options,
            "enqueued_at": task.enqueued_at,
            "result_ttl": task.result_ttl,
            "concurrency_key": task.concurrency_key,
            "concurrency_limit": task.concurrency_limit,
            "function": task.function,
        }

        def put(conn: sqlite3.Connection) -> ReplaceOutcome:
            row = conn.execute(_REPLACE_FIND, (task.id,)).fetchone()
            if row is not None and row[2] is not None and row[2] <= time.time():
                conn.execute("DELETE FROM sitq_tasks WHERE id = ?", (task.id,))
                row = None
            if row is None:
                conn.execute(
                    "INSERT INTO sitq_tasks (id, queue, state, priority, eta, payload, options, "
                    "enqueued_at, result_ttl, concurrency_key, concurrency_limit, function) "
                    "VALUES (:id, :queue, 0, :priority, :eta, :payload, :options, :enqueued_at, "
                    ":result_ttl, :concurrency_key, :concurrency_limit, :function)",
                    {**params, "queue": task.queue},
                )
                return ReplaceOutcome.STORED
            queue, state, _, old_key = row
            if queue != task.queue:
                return ReplaceOutcome.OTHER_QUEUE
            if state == _RUNNING:
                return ReplaceOutcome.RUNNING
            conn.execute(_REPLACE_TASK, params)
            if state != _PENDING:
                return ReplaceOutcome.REPLACED_FINISHED
            if old_key is not None:
                # It may have been the task a freed slot of its key was waiting for.
                _unpark(conn, queue, old_key, time.time())
            return ReplaceOutcome.REPLACED_PENDING

        return await self._run(lambda c: self._write(c, put), wrote=True)

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Claim expired leases first, then due pending tasks in priority order, atomically.

        Tasks with a concurrency key are admitted against the running count of their key, read
        in the same write transaction; a task whose key is full is parked (set aside from the
        claim index) until a task of its key settles, so it never holds back the tasks behind it.
        """
        # A commit noticed from now on must end the wait that follows an empty claim.
        self._changes.mark_claim()
        if limit <= 0:
            return []
        marks = ",".join("?" * len(queues))
        expired_sql = (
            "SELECT seq, queue, concurrency_key, concurrency_limit FROM sitq_tasks "
            f"WHERE state = 1 AND lease_until <= ? AND queue IN ({marks})"
        )

        def claim(conn: sqlite3.Connection) -> tuple[list[Claim], float, bool]:
            now = time.time()
            params = {"lease_until": now + lease, "worker": worker_id, "now": now}
            slots = _KeySlots(conn, now)
            seqs: list[int] = []
            cur = conn.execute(expired_sql, (now, *queues))
            for seq, queue, key, cap in cur:
                if slots.admit(queue, key, cap):
                    seqs.append(seq)
                    if len(seqs) == limit:
                        break
            cur.close()
            remaining = limit - len(seqs)
            dropped: set[tuple[str, str]] = set()
            if remaining > 0:
                due: list[Any] = []
                keyed = False
                for queue in queues:
                    due += conn.execute(_DUE, (queue, now, remaining)).fetchall()
                    picks = slots.candidates(queue, remaining)
                    if picks:
                        due += picks
                        keyed = True
                if due:
                    if keyed or len(queues) > 1:
                        due.sort(key=lambda r: _claim_order(r[0], r[1], r[2]))
                        # A keyed pick left out here parked its key's other tasks on a count
                        # that included it: put those back after the claim.
                        dropped = {(r[3], r[4]) for r in due[remaining:] if len(r) > 3}
                        due = due[:remaining]
                    seqs += [r[2] for r in due]
            rows: list[Any] = []
            if seqs:
                rows = conn.execute(
                    f"UPDATE sitq_tasks SET {_CLAIM_SET} WHERE seq IN ({','.join(map(str, seqs))}) "
                    f"{_CLAIM_RETURNING}",
                    params,
                ).fetchall()
            for queue, key in dropped:
                _unpark(conn, queue, key, now)
            rows.sort(key=lambda r: _claim_order(r[4], r[11], r[12]))
            claims = [
                Claim(
                    task_id=r[0],
                    queue=r[1],
                    payload=r[2],
                    options=r[3],
                    priority=r[4],
                    fencing_token=r[5],
                    attempts=r[6],
                    retries=r[7],
                    enqueued_at=r[8],
                    started_at=now,
                    result_ttl=r[9],
                    cancel_requested=bool(r[10]),
                    function=r[13],
                )
                for r in rows
            ]
            return claims, now, slots.budget <= 0

        claims, now, unfinished = await self._run(lambda c: self._write(c, claim))
        waited_on = tuple(queues)
        if len(claims) < limit and not unfinished:
            # Every task on these queues that was due and could run at ``now`` was handed out.
            self._claimed_all_at[waited_on] = now
        else:
            self._claimed_all_at.pop(waited_on, None)
        if unfinished:
            # Parking a backlog stopped at its budget: the next claim must come at once.
            self._signal_change()
        return claims

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Extend current claims in one transaction."""

        def extend(conn: sqlite3.Connection) -> list[LeaseState]:
            # A keyed task's lapsed lease gave up its slot, which another task may hold now.
            now = time.time()
            until = now + lease
            states = []
            for ref in claims:
                row = conn.execute(
                    "UPDATE sitq_tasks SET lease_until = ? WHERE id = ? AND fence = ? "
                    "AND state = 1 AND (concurrency_key IS NULL OR lease_until > ?) "
                    "RETURNING cancel_requested",
                    (until, ref.task_id, ref.fencing_token, now),
                ).fetchone()
                if row is None:
                    states.append(LeaseState.LOST)
                else:
                    states.append(LeaseState.CANCEL_REQUESTED if row[0] else LeaseState.HELD)
            return states

        return await self._run(lambda c: self._write(c, extend))

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply fenced settlements in one transaction. Settling a keyed task frees its slot:
        parked tasks of its key become claimable in the same transaction."""

        def settle(conn: sqlite3.Connection) -> list[bool]:
            applied = []
            freed: set[tuple[str, str]] = set()
            for s in settlements:
                ref = s.claim
                if isinstance(s, Finish):
                    sql = _FINISH
                    params: tuple[Any, ...] = (
                        STATUS_CODE[s.status],
                        s.value,
                        s.error,
                        s.traceback,
                        s.finished_at,
                        s.expires_at,
                        s.status is TaskStatus.SUCCESS,  # only a success drops its payload
                        ref.task_id,
                        ref.fencing_token,
                    )
                elif isinstance(s, Reschedule):
                    sql = _RESCHEDULE
                    params = (s.eta, s.error, s.traceback, ref.task_id, ref.fencing_token)
                elif isinstance(s, Release) and s.delay > 0:
                    sql = _RELEASE_LATER
                    params = (time.time() + s.delay, ref.task_id, ref.fencing_token)
                elif isinstance(s, Release):
                    sql = _RELEASE
                    params = (ref.task_id, ref.fencing_token)
                else:  # pragma: no cover
                    raise TypeError(f"not a settlement: {s!r}")
                # Most tasks have no key: their statement stays as cheap as it ever was, and
                # only a miss pays for reading back the key of the task it settles.
                if conn.execute(sql + _UNKEYED, params).rowcount == 1:
                    applied.append(True)
                    continue
                rows = conn.execute(sql + _KEYED, params).fetchall()
                freed.update((queue, key) for queue, key in rows)
                applied.append(bool(rows))
            if freed:
                now = time.time()
                for queue, key in freed:
                    _unpark(conn, queue, key, now)
            return applied

        return await self._run(lambda c: self._write(c, settle), wrote=True)

    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Cancel a pending task (keeping its payload for a requeue), or flag a running one."""

        def cancel(conn: sqlite3.Connection) -> CancelOutcome:
            row = conn.execute(
                "SELECT state, expires_at, queue, concurrency_key FROM sitq_tasks WHERE id = ?",
                (task_id,),
            ).fetchone()
            if row is None or (row[1] is not None and row[1] <= now):
                return CancelOutcome.NOT_FOUND
            state = row[0]
            if state == _PENDING:
                conn.execute(
                    "UPDATE sitq_tasks SET state = 4, error = 'cancelled before it started', "
                    "finished_at = ?, expires_at = ? + result_ttl WHERE id = ?",
                    (now, now, task_id),
                )
                if row[3] is not None:
                    # It may have been the task a freed slot was waiting for.
                    _unpark(conn, row[2], row[3], time.time())
                return CancelOutcome.CANCELLED
            if state == _RUNNING:
                conn.execute("UPDATE sitq_tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
                return CancelOutcome.REQUESTED
            return CancelOutcome.ALREADY_FINISHED

        return await self._run(lambda c: self._write(c, cancel), wrote=True)

    async def get_task(self, task_id: str) -> TaskSnapshot | None:
        """Read one task."""

        def read(conn: sqlite3.Connection) -> TaskSnapshot | None:
            row = conn.execute(
                f"SELECT {_listing.COLUMNS}, value, expires_at FROM sitq_tasks WHERE id = ?",
                (task_id,),
            ).fetchone()
            if row is None or (row[-1] is not None and row[-1] <= time.time()):
                return None
            return _listing.snapshot(row, row[-2])

        return await self._run(read)

    def _poll_cap(self) -> float:
        # With inotify every commit wakes us; without it, poll quickly at first, then back off.
        return 1.0 if self._watch is not None else 0.2

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Wait for the task to finish, woken by commits (inotify) or a growing poll."""
        return await wait_for_final(
            lambda: self.get_task(task_id),
            timeout,
            arm=lambda: self._changes.current,
            polls=Polls.growing(0.005, self._poll_cap),
            is_open=lambda: self._conn is not None,
        )

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for a commit, the next scheduled ETA or lease expiry, or ``timeout``."""
        changed = self._changes.since_claim()
        marks = ",".join("?" * len(queues))
        # After a claim that took everything it could, a task due before it is waiting for its
        # key (a settle will wake us) or for another queue: only later times end the wait.
        since = self._claimed_all_at.get(tuple(queues), -math.inf)

        def next_due(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(eta) FROM sitq_tasks INDEXED BY sitq_tasks_scheduled "
                f"WHERE state = 0 AND queue IN ({marks}) AND eta > ?",
                (*queues, since),
            ).fetchone()
            lease = conn.execute(
                "SELECT MIN(lease_until) FROM sitq_tasks WHERE state = 1 AND lease_until > ?",
                (since,),
            ).fetchone()
            times = [t for t in (row[0], lease[0]) if t is not None]
            return min(times) if times else None

        due = await self._run(next_due)
        if due is not None:
            timeout = min(timeout, max(due - time.time(), 0.0))
        if self._watch is None:
            timeout = min(timeout, 0.05)
        if timeout <= 0:
            return
        await wait_on(changed, timeout)

    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Delete expired results (and locks and worker records whose time ran out) in one
        transaction."""

        def purge(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM sitq_tasks WHERE seq IN (SELECT seq FROM sitq_tasks "
                "WHERE expires_at <= ? LIMIT ?)",
                (now, limit),
            )
            # Locks whose holders died without releasing them, and workers that died.
            conn.execute("DELETE FROM sitq_locks WHERE expires_at <= ?", (time.time(),))
            conn.execute("DELETE FROM sitq_live.sitq_workers WHERE expires_at <= ?", (now,))
            return cur.rowcount

        return await self._run(lambda c: self._write(c, purge))

    async def stats(self, now: float) -> list[QueueStats]:
        """Count tasks per queue and state, leaving out expired results, from the indexes
        (``stats_*`` in queries.sql), in one read transaction on the backend's thread: the
        count grows with the store, and the event loop must not wait for it."""

        def count(conn: sqlite3.Connection) -> list[QueueStats]:
            conn.execute("BEGIN")
            try:
                pending = conn.execute(_STATS_PENDING, (now,)).fetchall()
                running = conn.execute(_STATS_RUNNING).fetchall()
                finished = conn.execute(_STATS_FINISHED).fetchall()
                expired = conn.execute(_STATS_EXPIRED, (now, now)).fetchall()
            finally:
                conn.execute("COMMIT")
            counts: dict[tuple[str, int, bool], int] = {}
            for queue, n, scheduled in pending:
                counts[queue, 0, True] = scheduled or 0
                counts[queue, 0, False] = n - (scheduled or 0)
            for queue, n in running:
                counts[queue, 1, False] = n
            for state, queue, n in finished:
                counts[queue, state, False] = n
            for queue, state, future, n in expired:
                key = (queue, state, bool(future) if state == 0 else False)
                if key in counts:
                    counts[key] -= n
            return stats_from_counts(
                (queue, stats_kind(CODE_STATUS[state], future), n)
                for (queue, state, future), n in counts.items()
                if state in CODE_STATUS and n > 0  # a damaged row's unknown state is left out
            )

        return await self._run(count, slow=True)

    # -- inspection and operator actions ----------------------------------------------------

    async def list_tasks(
        self, status: TaskStatus, queue: str | None, limit: int, after: str | None, now: float
    ) -> SnapshotPage:
        """One page of a status, read through an index in its order (see ``_listing``)."""

        def read(conn: sqlite3.Connection) -> SnapshotPage:
            return _listing.read_page(conn, status, queue, limit, after, now)

        return await self._run(read)

    async def requeue(self, task_ids: Sequence[str], now: float) -> list[RequeueOutcome]:
        """Make failed and cancelled tasks pending again, each one conditional UPDATE, all in
        one write transaction (which wakes idle workers like an enqueue)."""

        def requeue(conn: sqlite3.Connection) -> list[RequeueOutcome]:
            outcomes = []
            for task_id in task_ids:
                if conn.execute(_REQUEUE, {"id": task_id, "now": now}).rowcount == 1:
                    outcomes.append(RequeueOutcome.REQUEUED)
                    continue
                row = conn.execute(
                    "SELECT expires_at FROM sitq_tasks WHERE id = ?", (task_id,)
                ).fetchone()
                gone = row is None or (row[0] is not None and row[0] <= now)
                outcomes.append(RequeueOutcome.NOT_FOUND if gone else RequeueOutcome.REFUSED)
            return outcomes

        return await self._run(lambda c: self._write(c, requeue), wrote=True)

    async def purge_tasks(self, queue: str, status: TaskStatus, limit: int) -> int:
        """Delete up to ``limit`` tasks of the queue in that state; never running ones."""
        if status is TaskStatus.RUNNING:
            return 0
        params: tuple[Any, ...] = (queue, limit)
        sql = _PURGE_PENDING
        if status is not TaskStatus.PENDING:
            sql, params = _PURGE_FINISHED, (STATUS_CODE[status], queue, limit)

        def purge(conn: sqlite3.Connection) -> int:
            return conn.execute(sql, params).rowcount

        return await self._run(lambda c: self._write(c, purge))

    async def save_progress(self, updates: Sequence[Progress]) -> None:
        """Store progress of current claims in one transaction (stale claims' is dropped)."""
        rows = [(u.value, u.message, u.claim.task_id, u.claim.fencing_token) for u in updates]
        if rows:
            await self._run(lambda c: self._write(c, lambda w: w.executemany(_SAVE_PROGRESS, rows)))

    async def put_worker(self, record: WorkerRecord) -> None:
        """Create or replace the worker's row."""
        row = (record.worker_id, record.data, record.expires_at)
        await self._run(lambda c: self._write(c, lambda w: w.execute(_PUT_WORKER, row)))

    async def remove_worker(self, worker_id: str) -> None:
        """Delete the worker's row."""
        sql = "DELETE FROM sitq_live.sitq_workers WHERE worker_id = ?"
        await self._run(lambda c: self._write(c, lambda w: w.execute(sql, (worker_id,))))

    async def list_workers(self, now: float) -> list[WorkerRecord]:
        """The rows not yet expired, by worker id (expired ones go with ``purge_expired``)."""

        def read(conn: sqlite3.Connection) -> list[WorkerRecord]:
            rows = conn.execute(_LIST_WORKERS, (now,)).fetchall()
            return [WorkerRecord(worker_id=r[0], data=bytes(r[1]), expires_at=r[2]) for r in rows]

        return await self._run(read)

    # -- moving tasks between stores ----------------------------------------------------

    async def hold(self, queues: Sequence[str], limit: int, holder: str) -> list[HeldTask]:
        """Hold tasks for a move, in one write transaction (see ``_move``)."""
        return await self._run(
            lambda c: self._write(c, lambda w: _move.hold(w, queues, limit, holder))
        )

    async def put_stored(self, records: Sequence[StoredTask]) -> list[bool]:
        """Insert moved tasks in one write transaction; an id still known is left alone."""
        return await self._run(
            lambda c: self._write(c, lambda w: _move.put_stored(w, records)), wrote=True
        )

    async def drop_held(self, refs: Sequence[ClaimRef]) -> list[bool]:
        """Delete held tasks by their claims, in one write transaction."""
        return await self._run(lambda c: self._write(c, lambda w: _move.drop_held(w, refs)))

    # -- cron -------------------------------------------------------------------------------

    async def put_cron(self, name: str, definition: bytes, start: float) -> None:
        """Create the schedule with ``last_tick = start``, or replace its definition only."""

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO sitq_crons (name, definition, last_tick) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET definition = excluded.definition",
                (name, definition, start),
            )

        await self._run(lambda c: self._write(c, put))

    async def delete_cron(self, name: str) -> bool:
        """Remove the schedule; ``True`` if it existed."""

        def delete(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM sitq_crons WHERE name = ?", (name,)).rowcount == 1

        return await self._run(lambda c: self._write(c, delete))

    async def list_crons(self) -> list[CronRecord]:
        """Every schedule, sorted by name."""

        def read(conn: sqlite3.Connection) -> list[CronRecord]:
            rows = conn.execute("SELECT name, definition, last_tick FROM sitq_crons").fetchall()
            return sorted(
                (CronRecord(name=r[0], definition=bytes(r[1]), last_tick=r[2]) for r in rows),
                key=lambda r: r.name,
            )

        return await self._run(read)

    async def advance_cron(self, name: str, expected: float, tick: float) -> bool:
        """Compare-and-set ``last_tick`` in one write transaction."""

        def advance(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE sitq_crons SET last_tick = ? WHERE name = ? AND last_tick = ?",
                (tick, name, expected),
            )
            return cur.rowcount == 1

        return await self._run(lambda c: self._write(c, advance))

    # -- locks ------------------------------------------------------------------------------
    # One row per held lock; the TTL runs on this machine's clock, which every process
    # sharing the file reads.

    async def acquire_lock(self, name: str, token: str, ttl: float) -> bool:
        """Take the lock if it is free or its holder's TTL ran out."""

        def acquire(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cur = conn.execute(
                "INSERT INTO sitq_locks (name, token, expires_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET token = excluded.token, "
                "expires_at = excluded.expires_at WHERE sitq_locks.expires_at <= ?",
                (name, token, now + ttl, now),
            )
            return cur.rowcount == 1

        return await self._run(lambda c: self._write(c, acquire))

    async def acquire_any_lock(
        self, names: Sequence[str], token: str, ttl: float
    ) -> tuple[str | None, float]:
        """Read which of the locks are held and take the first free one, in one write
        transaction."""

        def acquire(conn: sqlite3.Connection) -> tuple[str | None, float]:
            now = time.time()
            held = dict(conn.execute(_LOCKS_HELD, (json.dumps(list(names)), now)).fetchall())
            for name in names:
                if name not in held:
                    conn.execute(_TAKE_LOCK, (name, token, now + ttl, now))
                    return name, 0.0
            return None, max(min(held.values(), default=now) - now, 0.0)

        return await self._run(lambda c: self._write(c, acquire))

    async def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Extend the lock to ``now + ttl`` if ``token`` holds it and its TTL has not run out."""

        def extend(conn: sqlite3.Connection) -> bool:
            now = time.time()
            cur = conn.execute(
                "UPDATE sitq_locks SET expires_at = ? "
                "WHERE name = ? AND token = ? AND expires_at > ?",
                (now + ttl, name, token, now),
            )
            return cur.rowcount == 1

        return await self._run(lambda c: self._write(c, extend))

    async def release_lock(self, name: str, token: str) -> bool:
        """Release the lock if ``token`` still holds it; another token's lock is left alone."""

        def release(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "DELETE FROM sitq_locks WHERE name = ? AND token = ? RETURNING expires_at",
                (name, token),
            ).fetchone()
            return row is not None and row[0] > time.time()

        return await self._run(lambda c: self._write(c, release))
