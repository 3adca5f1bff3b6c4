"""The SQLite backend: the embedded default, one file, no server.

Design:

* WAL journal, so readers never block the writer; every write is one ``BEGIN IMMEDIATE``
  transaction, so two processes never both act on a stale snapshot (claims are atomic: a task
  is never handed out twice while its lease holds). ``synchronous=NORMAL`` by default: a
  committed task survives any process crash; pass ``synchronous="full"`` to also survive power
  loss at some cost in speed.
* All statements of one backend object run on one thread of their own, so the event loop never
  blocks on the file or on another process holding the write lock.
* One table; partial indexes keep only live rows in the claim paths, so claims stay fast however
  many finished rows wait for their results to expire.
* No server means no push channel: on Linux, an inotify watch on the ``-wal`` file wakes idle
  workers and result waiters in every process the moment another process commits; elsewhere
  waiters poll with a short, growing interval.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sitq.backends._inotify import DirectoryWatch, watch_directory
from sitq.backends.base import Backend, ChangeSignal, stats_from_counts, stats_kind
from sitq.errors import BackendError, ConfigurationError
from sitq.models import (
    CancelOutcome,
    Claim,
    ClaimRef,
    Finish,
    LeaseState,
    NewTask,
    QueueStats,
    Release,
    Reschedule,
    Settlement,
    TaskSnapshot,
    TaskStatus,
)

T = TypeVar("T")

_PENDING, _RUNNING, _SUCCESS, _FAILED, _CANCELLED = 0, 1, 2, 3, 4
_STATE_TO_STATUS = {
    _PENDING: TaskStatus.PENDING,
    _RUNNING: TaskStatus.RUNNING,
    _SUCCESS: TaskStatus.SUCCESS,
    _FAILED: TaskStatus.FAILED,
    _CANCELLED: TaskStatus.CANCELLED,
}
_STATUS_TO_STATE = {v: k for k, v in _STATE_TO_STATUS.items()}
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sitq_tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    queue TEXT NOT NULL,
    state INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    eta REAL NOT NULL,
    payload BLOB,
    options TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    fence INTEGER NOT NULL DEFAULT 0,
    lease_until REAL,
    worker_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    expires_at REAL,
    result_ttl REAL NOT NULL,
    value BLOB,
    error TEXT,
    traceback TEXT,
    concurrency_key TEXT,
    concurrency_limit INTEGER
);
CREATE INDEX IF NOT EXISTS sitq_tasks_due
    ON sitq_tasks (queue, priority DESC, eta, seq) WHERE state = 0;
CREATE INDEX IF NOT EXISTS sitq_tasks_scheduled ON sitq_tasks (queue, eta) WHERE state = 0;
CREATE INDEX IF NOT EXISTS sitq_tasks_leases ON sitq_tasks (lease_until) WHERE state = 1;
CREATE INDEX IF NOT EXISTS sitq_tasks_expiry
    ON sitq_tasks (expires_at) WHERE expires_at IS NOT NULL;
"""

_CLAIM_SET = """
    state = 1, attempts = attempts + 1, fence = fence + 1, lease_until = :lease_until,
    worker_id = :worker, started_at = :now
"""
_CLAIM_RETURNING = """
    RETURNING id, queue, payload, options, priority, fence, attempts, retries, enqueued_at,
              result_ttl, cancel_requested, eta, seq
"""
_SYNCHRONOUS = ("off", "normal", "full", "extra")


class SQLiteBackend(Backend):
    """Tasks in one SQLite file, shared safely by any number of processes on one machine.

    ``db_path`` is the file (created if missing); ``busy_timeout`` is how long a statement
    waits for another process's write lock before failing with :class:`BackendError`.
    """

    scheme = "sqlite"

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
        if not 0 < busy_timeout < math.inf:
            raise ConfigurationError(f"busy_timeout must be > 0 seconds, not {busy_timeout!r}")
        self.busy_timeout = float(busy_timeout)
        self._conn: sqlite3.Connection | None = None
        self._fast: sqlite3.Connection | None = None
        self._fast_after = 0.0
        self._fast_writes = 0
        self._thread: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: DirectoryWatch | None = None
        self._changes = ChangeSignal()

    @classmethod
    def options_from_query(cls, params: dict[str, str]) -> dict[str, Any]:
        """Constructor options from URL query parameters (``?synchronous=full``)."""
        options: dict[str, Any] = {}
        for key, value in params.items():
            if key == "synchronous":
                options["synchronous"] = value
            elif key == "busy_timeout":
                try:
                    options["busy_timeout"] = float(value)
                except ValueError:
                    raise ConfigurationError(f"busy_timeout={value!r} is not a number") from None
            else:
                raise ConfigurationError(
                    f"unknown sqlite URL option {key!r}: known are synchronous, busy_timeout"
                )
        return options

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
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            elif version > SCHEMA_VERSION:
                raise BackendError(
                    f"SQLite database {self.db_path!r} has schema version {version}, newer than "
                    f"this sitq understands ({SCHEMA_VERSION}): upgrade sitq"
                )
        except sqlite3.Error as exc:
            conn.close()
            raise BackendError(f"SQLite {self.db_path!r}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

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
        except sqlite3.Error:
            return None
        return fast

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
        self._signal_change()
        await asyncio.get_running_loop().run_in_executor(thread, conn.close)
        thread.shutdown(wait=True)

    def _on_watch_event(self) -> None:
        if self._watch is not None and self._watch.read_events():
            self._signal_change()

    def _signal_change(self) -> None:
        self._changes.signal()

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, wrote: bool = False) -> T:
        conn, thread = self._conn, self._thread
        if conn is None or thread is None:
            raise BackendError(
                f"SQLiteBackend({self.db_path!r}) is not connected: call `await backend.connect()`"
            )
        fast = self._fast
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
            )
            for t in tasks
        ]
        sql = (
            "INSERT INTO sitq_tasks (id, queue, state, priority, eta, payload, options, "
            "enqueued_at, result_ttl, concurrency_key, concurrency_limit) "
            "VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
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
                exists = conn.execute(
                    "SELECT expires_at FROM sitq_tasks WHERE id = ?", (row[0],)
                ).fetchone()
                if exists is not None and exists[0] is not None and exists[0] <= now:
                    conn.execute("DELETE FROM sitq_tasks WHERE id = ?", (row[0],))
                    conn.execute(sql, row)
                    stored.append(True)
                else:
                    inserted = exists is None
                    if inserted:  # pragma: no cover - a duplicate inside this batch
                        conn.execute(sql, row)
                    stored.append(inserted)
            return stored

        return await self._run(lambda c: self._write(c, insert), wrote=True)

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Claim expired leases first, then due pending tasks in priority order, atomically."""
        # A commit noticed from now on must end the wait that follows an empty claim.
        self._changes.mark_claim()
        if limit <= 0:
            return []
        marks = ",".join("?" * len(queues))

        def claim(conn: sqlite3.Connection) -> list[Claim]:
            now = time.time()
            params = {"lease_until": now + lease, "worker": worker_id, "now": now}
            rows: list[Any] = []
            expired = conn.execute(
                f"SELECT seq FROM sitq_tasks WHERE state = 1 AND lease_until <= ? "
                f"AND queue IN ({marks}) LIMIT ?",
                (now, *queues, limit),
            ).fetchall()
            if expired:
                seqs = ",".join(str(r[0]) for r in expired)
                rows += conn.execute(
                    f"UPDATE sitq_tasks SET {_CLAIM_SET} WHERE seq IN ({seqs}) {_CLAIM_RETURNING}",
                    params,
                ).fetchall()
            remaining = limit - len(rows)
            if remaining > 0:
                due: list[Any] = []
                for queue in queues:
                    due += conn.execute(
                        "SELECT priority, eta, seq FROM sitq_tasks INDEXED BY sitq_tasks_due "
                        "WHERE state = 0 AND queue = ? "
                        "AND eta <= ? ORDER BY priority DESC, eta, seq LIMIT ?",
                        (queue, now, remaining),
                    ).fetchall()
                if due:
                    if len(queues) > 1:
                        due.sort(key=lambda r: (-r[0], r[1], r[2]))
                        due = due[:remaining]
                    seqs = ",".join(str(r[2]) for r in due)
                    rows += conn.execute(
                        f"UPDATE sitq_tasks SET {_CLAIM_SET} WHERE seq IN ({seqs}) "
                        f"{_CLAIM_RETURNING}",
                        params,
                    ).fetchall()
            rows.sort(key=lambda r: (-r[4], r[11], r[12]))
            return [
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
                )
                for r in rows
            ]

        return await self._run(lambda c: self._write(c, claim))

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Extend current claims in one transaction."""

        def extend(conn: sqlite3.Connection) -> list[LeaseState]:
            until = time.time() + lease
            states = []
            for ref in claims:
                row = conn.execute(
                    "UPDATE sitq_tasks SET lease_until = ? WHERE id = ? AND fence = ? "
                    "AND state = 1 RETURNING cancel_requested",
                    (until, ref.task_id, ref.fencing_token),
                ).fetchone()
                if row is None:
                    states.append(LeaseState.LOST)
                else:
                    states.append(LeaseState.CANCEL_REQUESTED if row[0] else LeaseState.HELD)
            return states

        return await self._run(lambda c: self._write(c, extend))

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply fenced settlements in one transaction."""
        fence = "WHERE id = ? AND fence = ? AND state = 1"

        def settle(conn: sqlite3.Connection) -> list[bool]:
            applied = []
            for s in settlements:
                ref = s.claim
                if isinstance(s, Finish):
                    cur = conn.execute(
                        "UPDATE sitq_tasks SET state = ?, value = ?, error = ?, traceback = ?, "
                        "finished_at = ?, expires_at = ?, payload = NULL, worker_id = NULL, "
                        f"lease_until = NULL {fence}",
                        (
                            _STATUS_TO_STATE[s.status],
                            s.value,
                            s.error,
                            s.traceback,
                            s.finished_at,
                            s.expires_at,
                            ref.task_id,
                            ref.fencing_token,
                        ),
                    )
                elif isinstance(s, Reschedule):
                    cur = conn.execute(
                        "UPDATE sitq_tasks SET state = 0, eta = ?, retries = retries + 1, "
                        "error = ?, traceback = ?, worker_id = NULL, lease_until = NULL "
                        f"{fence}",
                        (s.eta, s.error, s.traceback, ref.task_id, ref.fencing_token),
                    )
                elif isinstance(s, Release):
                    cur = conn.execute(
                        "UPDATE sitq_tasks SET state = 0, attempts = attempts - 1, "
                        f"worker_id = NULL, lease_until = NULL {fence}",
                        (ref.task_id, ref.fencing_token),
                    )
                else:  # pragma: no cover
                    raise TypeError(f"not a settlement: {s!r}")
                applied.append(cur.rowcount == 1)
            return applied

        return await self._run(lambda c: self._write(c, settle), wrote=True)

    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Cancel a pending task, or flag a running one."""

        def cancel(conn: sqlite3.Connection) -> CancelOutcome:
            row = conn.execute(
                "SELECT state, expires_at FROM sitq_tasks WHERE id = ?", (task_id,)
            ).fetchone()
            if row is None or (row[1] is not None and row[1] <= now):
                return CancelOutcome.NOT_FOUND
            state = row[0]
            if state == _PENDING:
                conn.execute(
                    "UPDATE sitq_tasks SET state = 4, error = 'cancelled before it started', "
                    "finished_at = ?, expires_at = ? + result_ttl, payload = NULL WHERE id = ?",
                    (now, now, task_id),
                )
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
                "SELECT id, queue, state, attempts, enqueued_at, eta, started_at, finished_at, "
                "value, error, traceback, expires_at FROM sitq_tasks WHERE id = ?",
                (task_id,),
            ).fetchone()
            if row is None or (row[11] is not None and row[11] <= time.time()):
                return None
            return TaskSnapshot(
                task_id=row[0],
                queue=row[1],
                status=_STATE_TO_STATUS[row[2]],
                attempts=row[3],
                enqueued_at=row[4],
                eta=row[5],
                started_at=row[6],
                finished_at=row[7],
                value=row[8],
                error=row[9],
                traceback=row[10],
            )

        return await self._run(read)

    def _poll_cap(self) -> float:
        # With inotify every commit wakes us; without it, poll quickly at first, then back off.
        return 1.0 if self._watch is not None else 0.2

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Wait for the task to finish, woken by commits (inotify) or a growing poll."""
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            changed = self._changes.current
            snap = await self.get_task(task_id)
            remaining = deadline - time.monotonic()
            if snap is None or snap.status.is_final or remaining <= 0 or self._conn is None:
                return snap
            await ChangeSignal.wait(changed, min(delay, remaining))
            delay = min(delay * 2, self._poll_cap())

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for a commit, the next scheduled ETA or lease expiry, or ``timeout``."""
        changed = self._changes.since_claim()
        marks = ",".join("?" * len(queues))

        def next_due(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT MIN(eta) FROM sitq_tasks INDEXED BY sitq_tasks_scheduled "
                f"WHERE state = 0 AND queue IN ({marks})",
                tuple(queues),
            ).fetchone()
            lease = conn.execute(
                "SELECT MIN(lease_until) FROM sitq_tasks WHERE state = 1"
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
        await ChangeSignal.wait(changed, timeout)

    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Delete expired results in one transaction."""

        def purge(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM sitq_tasks WHERE seq IN (SELECT seq FROM sitq_tasks "
                "WHERE expires_at <= ? LIMIT ?)",
                (now, limit),
            )
            return cur.rowcount

        return await self._run(lambda c: self._write(c, purge))

    async def stats(self, now: float) -> list[QueueStats]:
        """Count tasks per queue and state."""

        def count(conn: sqlite3.Connection) -> list[QueueStats]:
            rows = conn.execute(
                "SELECT queue, state, eta > ?, COUNT(*) FROM sitq_tasks "
                "WHERE expires_at IS NULL OR expires_at > ? GROUP BY 1, 2, 3",
                (now, now),
            ).fetchall()
            return stats_from_counts(
                (queue, stats_kind(_STATE_TO_STATUS[state], bool(future)), n)
                for queue, state, future, n in rows
            )

        return await self._run(count)
