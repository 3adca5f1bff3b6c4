"""Listing pages of the PostgreSQL backend: which statement reads a page, the position it
continues from, and the snapshots it returns.

A position is the sort key of the last task of a page, as JSON: ``[priority, eta, seq]`` for
pending tasks, ``[started_at, seq]`` for running ones and ``[finished_at, id]`` for finished
ones. Each key is unique and its order total, so a task that stays in its status is listed
once. The statements (``list_*`` in queries.sql) read one more row than the page, to tell
whether another page follows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sitq.backends.base import CODE_STATUS, STATUS_CODE
from sitq.errors import ConfigurationError
from sitq.models import SnapshotPage, TaskSnapshot, TaskStatus

_INT_MAX = 2**31 - 1
# Positions before every task: the first page starts after them.
_FIRST: dict[str, list[Any]] = {
    "pending": [_INT_MAX, -math.inf, 0],
    "running": [-math.inf, 0],
    "finished": [math.inf, ""],
}
_TYPES: dict[str, tuple[tuple[type, ...], ...]] = {
    "pending": ((int,), (int, float), (int,)),
    "running": ((int, float), (int,)),
    "finished": ((int, float), (str,)),
}


@dataclass(frozen=True, slots=True)
class ListingStatements:
    """The ``list_*`` statements of queries.sql for one schema."""

    pending_queue: str
    pending_all: str
    running_queue: str
    running_all: str
    finished_queue: str
    finished_all: str


def _kind(status: TaskStatus) -> str:
    if status in (TaskStatus.PENDING, TaskStatus.RUNNING):
        return status.value
    return "finished"


def _position(kind: str, after: str | None) -> list[Any]:
    if after is None:
        return list(_FIRST[kind])
    try:
        position = json.loads(after)
    except ValueError:
        position = None
    types = _TYPES[kind]
    if (
        not isinstance(position, list)
        or len(position) != len(types)
        or not all(
            isinstance(v, t) and not isinstance(v, bool)
            for v, t in zip(position, types, strict=True)
        )
    ):
        raise ConfigurationError(f"{after!r} is not a position of a {kind} listing")
    return [float(v) if float in t else v for v, t in zip(position, types, strict=True)]


def page_query(
    sql: ListingStatements, status: TaskStatus, queue: str | None, limit: int, after: str | None
) -> tuple[str, list[Any]]:
    """The statement and arguments that read the page of ``status`` after ``after``."""
    kind = _kind(status)
    position = _position(kind, after)
    rows = limit + 1
    if kind == "pending":
        if queue is None:
            return sql.pending_all, [*position, rows]
        return sql.pending_queue, [queue, *position, rows]
    if kind == "running":
        if queue is None:
            return sql.running_all, [*position, rows]
        return sql.running_queue, [queue, *position, rows]
    code = STATUS_CODE[status]
    if queue is None:
        return sql.finished_all, [code, *position, rows]
    return sql.finished_queue, [queue, code, *position, rows]


def _key(kind: str, row: Any) -> list[Any]:
    if kind == "pending":
        return [row["priority"], row["eta"], row["seq"]]
    if kind == "running":
        return [row["started_at"], row["seq"]]
    return [row["finished_at"], row["id"]]


def page_of(status: TaskStatus, rows: Sequence[Any], limit: int) -> SnapshotPage:
    """The page of up to ``limit`` snapshots from the rows a ``list_*`` statement read."""
    page = rows[:limit]
    after = None
    if len(rows) > limit:
        after = json.dumps(_key(_kind(status), page[-1]), separators=(",", ":"))
    return SnapshotPage(tasks=[snapshot(r, None) for r in page], after=after)


def snapshot(row: Any, value: bytes | None) -> TaskSnapshot:
    """A task's snapshot from a row of ``get`` or of a listing (``worker_id`` and progress
    only while it runs)."""
    status = CODE_STATUS[row["state"]]
    running = status is TaskStatus.RUNNING
    return TaskSnapshot(
        task_id=row["id"],
        queue=row["queue"],
        status=status,
        attempts=row["attempts"],
        enqueued_at=row["enqueued_at"],
        eta=row["eta"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        value=value,
        error=row["error"],
        traceback=row["traceback"],
        function=row["function"],
        priority=row["priority"],
        progress=row["progress"] if running else None,
        progress_message=row["progress_message"] if running else None,
        worker_id=row["worker_id"] if running else None,
    )
