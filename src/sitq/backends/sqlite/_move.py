"""The SQLite backend's steps for moving tasks to another store, each run inside one write
transaction (see ``Backend.hold``, ``put_stored`` and ``drop_held``)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from sitq.backends._migrations import load_queries
from sitq.backends.sqlite._ids import id_is_free
from sitq.models import MAX_ETA_TIMESTAMP, ClaimRef, HeldTask, NewTask, StoredTask

_QUERIES = load_queries(__package__ or "sitq.backends.sqlite", "move.sql")


def hold(
    conn: sqlite3.Connection, queues: Sequence[str], limit: int, holder: str
) -> list[HeldTask]:
    """Hold up to ``limit`` tasks: those ``holder`` holds already, then pending ones."""
    seqs: list[int] = []
    for sql, extra in ((_QUERIES["held_by"], (holder,)), (_QUERIES["pending"], ())):
        for queue in queues:
            if len(seqs) >= limit:
                break
            rows = conn.execute(sql, (queue, *extra, limit - len(seqs))).fetchall()
            seqs.extend(row[0] for row in rows)
    now = time.time()
    held: list[HeldTask] = []
    for seq in seqs:
        row = conn.execute(
            _QUERIES["hold"],
            {"lease_until": MAX_ETA_TIMESTAMP, "holder": holder, "now": now, "seq": seq},
        ).fetchone()
        if row is None:  # pragma: no cover - the write transaction keeps the rows read
            continue
        task = NewTask(
            id=row[0],
            queue=row[1],
            payload=row[2],
            options=row[3],
            priority=row[4],
            eta=row[5],
            enqueued_at=row[6],
            result_ttl=row[7],
            concurrency_key=row[8],
            concurrency_limit=row[9],
            function=row[10],
        )
        record = StoredTask(
            task, attempts=row[11], retries=row[12], error=row[13], traceback=row[14]
        )
        held.append(HeldTask(record, ClaimRef(row[0], row[15])))
    return held


def put_stored(conn: sqlite3.Connection, records: Sequence[StoredTask]) -> list[bool]:
    """Insert each record as a pending task; an id still known is left alone, one whose
    result has expired is replaced."""
    sql = _QUERIES["put_stored"]
    now = time.time()
    stored: list[bool] = []
    for item in records:
        free = id_is_free(conn, item.task.id, now)
        if free:
            conn.execute(sql, item.row())
        stored.append(free)
    return stored


def drop_held(conn: sqlite3.Connection, refs: Sequence[ClaimRef]) -> list[bool]:
    """Delete each task still held under its claim."""
    sql = _QUERIES["drop_held"]
    return [conn.execute(sql, (r.task_id, r.fencing_token)).rowcount == 1 for r in refs]
