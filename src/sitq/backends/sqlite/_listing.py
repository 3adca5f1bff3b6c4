"""The SQLite statements of ``list_tasks``: one page of one status, read through indexes.

A page is a keyset read: the position ``after`` is the sort key of the last task listed (JSON),
and the next page starts strictly after it. Each status is read in its listing order straight
from an index, so a page costs the same beside a million stored tasks as in an empty file:

* pending: priority high to low, then due time, then ``seq``. Every queue: the index
  ``sitq_tasks_pending``. One queue: the claim indexes already hold that order (unkeyed tasks,
  keyed ones waiting for a claim) and ``sitq_tasks_parked`` the rest; the three are merged.
  The part after a position is read as ranges that each seek the index directly and follow
  each other in order: the same priority and due time with a later ``seq``, the same priority
  with a later due time, then every lower priority (one row-value comparison would not do: the
  order mixes directions, and SQLite seeks only the first column of such a comparison).
* running: ``started_at`` then ``seq``: ``sitq_tasks_running`` (every queue) or
  ``sitq_tasks_queue_running`` (one queue), after a position as two ranges in the same way.
* finished: ``finished_at`` then ``seq``, most recent first: ``sitq_tasks_finished`` (every
  queue) or ``sitq_tasks_queue_finished`` (one queue), likewise. Expired results are left out.

A page is read in one read transaction, so its ranges and sources see one state of the file.

Nothing here reads a payload or a value.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from sitq.backends.base import CODE_STATUS, STATUS_CODE
from sitq.errors import ConfigurationError
from sitq.models import SnapshotPage, TaskSnapshot, TaskStatus

COLUMNS = (
    "id, queue, state, attempts, enqueued_at, eta, started_at, finished_at, error, traceback, "
    "function, priority, progress, progress_message, worker_id, seq"
)
"""The columns of a listed (or read) task, in the order :func:`snapshot` reads them."""

_PENDING_ORDER = "priority DESC, eta, seq"
# Pending tasks of one queue: the claim indexes and the parked tasks' own, as (index, filter).
# Together they hold every pending task of the queue exactly once.
_PENDING_SOURCES = (
    ("sitq_tasks_due", "state = 0 AND concurrency_key IS NULL AND queue = ?"),
    (
        "sitq_tasks_keyed_due",
        "state = 0 AND concurrency_key IS NOT NULL AND parked = 0 AND queue = ?",
    ),
    (
        "sitq_tasks_parked",
        "state = 0 AND parked = 1 AND queue = ? AND concurrency_key IS NOT NULL",
    ),
)
_KEY_SIZE = {TaskStatus.PENDING: 3, TaskStatus.RUNNING: 2}
_FINISHED_KEY_SIZE = 2


def snapshot(row: Sequence[Any], value: bytes | None = None) -> TaskSnapshot:
    """A task's snapshot from a row of :data:`COLUMNS`; worker and progress only while it
    runs."""
    status = CODE_STATUS[row[2]]
    running = status is TaskStatus.RUNNING
    return TaskSnapshot(
        task_id=row[0],
        queue=row[1],
        status=status,
        attempts=row[3],
        enqueued_at=row[4],
        eta=row[5],
        started_at=row[6],
        finished_at=row[7],
        value=value,
        error=row[8],
        traceback=row[9],
        function=row[10],
        priority=row[11],
        progress=row[12] if running else None,
        progress_message=row[13] if running else None,
        worker_id=row[14] if running else None,
    )


def sort_key(status: TaskStatus, row: Sequence[Any]) -> list[Any]:
    """The position of a listed row in its status's order (what ``after`` encodes)."""
    if status is TaskStatus.PENDING:
        return [row[11], row[5], row[15]]
    if status is TaskStatus.RUNNING:
        return [row[6], row[15]]
    return [row[7], row[15]]


def _position(status: TaskStatus, after: str) -> list[Any]:
    size = _KEY_SIZE.get(status, _FINISHED_KEY_SIZE)
    try:
        key = json.loads(after)
    except ValueError:
        key = None
    if (
        not isinstance(key, list)
        or len(key) != size
        or not all(isinstance(k, int | float) and not isinstance(k, bool) for k in key)
    ):
        raise ConfigurationError(
            f"after={after!r} is not a position a {status} listing of this backend returned"
        )
    return key


def read_page(
    conn: sqlite3.Connection,
    status: TaskStatus,
    queue: str | None,
    limit: int,
    after: str | None,
    now: float,
) -> SnapshotPage:
    """Up to ``limit`` tasks of ``status`` after the position ``after``, in listing order, read
    in one snapshot of the file."""
    start = None if after is None else _position(status, after)
    sources = _sources(status, queue, start, now)
    found: list[list[Any]] = []
    conn.execute("BEGIN")
    try:
        for ranges in sources:
            # The ranges of a source follow each other in listing order: read on until the
            # page (and one more row, to know whether another page follows) is full.
            rows: list[Any] = []
            for sql, params in ranges:
                rows += conn.execute(sql, [*params, limit + 1 - len(rows)]).fetchall()
                if len(rows) > limit:
                    break
            found.append(rows)
    finally:
        conn.execute("COMMIT")
    rows = found[0] if len(found) == 1 else sorted(itertools.chain(*found), key=_pending_order)
    page = rows[:limit]
    more = len(rows) > limit
    return SnapshotPage(
        tasks=[snapshot(row) for row in page],
        after=json.dumps(sort_key(status, page[-1])) if more else None,
    )


def _pending_order(row: Sequence[Any]) -> tuple[int, Any, Any, Any]:
    # A damaged row whose priority or due time is not a number sorts first, as it claims first.
    if type(row[11]) is not int or type(row[5]) not in (int, float):
        return (0, 0, 0.0, row[15])
    return (1, -row[11], row[5], row[15])


_Read = tuple[str, list[Any]]


def _sources(
    status: TaskStatus, queue: str | None, start: list[Any] | None, now: float
) -> list[list[_Read]]:
    """Per index to read, its ranges after ``start`` in listing order, each a statement whose
    last parameter (the row limit) is left to the caller."""
    if status is TaskStatus.PENDING:
        if queue is None:
            return [_pending_ranges("sitq_tasks_pending", "state = 0", [], start)]
        return [_pending_ranges(index, where, [queue], start) for index, where in _PENDING_SOURCES]
    if status is TaskStatus.RUNNING:
        index, where, params = "sitq_tasks_running", "state = 1", list[Any]()
        if queue is not None:
            index, where, params = "sitq_tasks_queue_running", "state = 1 AND queue = ?", [queue]
        return [_ranges(index, where, params, "started_at, seq", start, ">")]
    # Finished: the index condition (state >= 2) is written out so the partial index applies.
    index, where, params = "sitq_tasks_finished", "state >= 2 AND state = ?", [STATUS_CODE[status]]
    if queue is not None:
        index, where = "sitq_tasks_queue_finished", where + " AND queue = ?"
        params.append(queue)
    where += " AND (expires_at IS NULL OR expires_at > ?)"
    return [_ranges(index, where, [*params, now], "finished_at DESC, seq DESC", start, "<")]


def _ranges(
    index: str, where: str, params: list[Any], order: str, start: list[Any] | None, after: str
) -> list[_Read]:
    """The reads of an index ordered by (time, seq), both ascending or both descending, after
    ``start``: the rest of its time, then the times beyond (``after`` says which way)."""
    ranges: list[tuple[str, list[Any]]] = [("", [])]
    if start is not None:
        column = order.split(",")[0].split()[0]
        at, seq = start
        ranges = [
            (f" AND {column} = ? AND seq {after} ?", [at, seq]),
            (f" AND {column} {after} ?", [at]),
        ]
    return [
        (
            f"SELECT {COLUMNS} FROM sitq_tasks INDEXED BY {index} WHERE {where}{extra} "
            f"ORDER BY {order} LIMIT ?",
            [*params, *values],
        )
        for extra, values in ranges
    ]


def _pending_ranges(
    index: str, where: str, params: list[Any], start: list[Any] | None
) -> list[_Read]:
    ranges: list[tuple[str, list[Any]]] = [("", [])]
    if start is not None:
        priority, eta, seq = start
        ranges = [
            (" AND priority = ? AND eta = ? AND seq > ?", [priority, eta, seq]),
            (" AND priority = ? AND eta > ?", [priority, eta]),
            (" AND priority < ?", [priority]),
        ]
    return [
        (
            f"SELECT {COLUMNS} FROM sitq_tasks INDEXED BY {index} WHERE {where}{extra} "
            f"ORDER BY {_PENDING_ORDER} LIMIT ?",
            [*params, *values],
        )
        for extra, values in ranges
    ]
