"""The PostgreSQL backend's steps for moving tasks to another store (see ``Backend.hold``,
``put_stored`` and ``drop_held``); the statements are in ``move.sql``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sitq.backends._migrations import load_queries, with_schema
from sitq.models import MAX_ETA_TIMESTAMP, ClaimRef, HeldTask, NewTask, StoredTask

_QUERIES = load_queries(__package__ or "sitq.backends.postgres", "move.sql")


class MoveStatements:
    """The statements of move.sql for one schema."""

    def __init__(self, schema: str) -> None:
        sql = {name: with_schema(text, schema) for name, text in _QUERIES.items()}
        self.hold = sql["hold"]
        self.put_stored = sql["put_stored"]
        self.undo_finished = sql["undo_finished"]
        self.drop_held = sql["drop_held"]


async def hold(
    conn: Any, sql: MoveStatements, queues: Sequence[str], limit: int, holder: str
) -> list[HeldTask]:
    """Hold up to ``limit`` tasks in one statement, returned in claim order."""
    rows = await conn.fetch(sql.hold, list(queues), limit, holder, MAX_ETA_TIMESTAMP)
    rows = sorted(rows, key=lambda r: (-r["priority"], r["eta"], r["seq"]))
    held = []
    for r in rows:
        task = NewTask(
            id=r["id"],
            queue=r["queue"],
            payload=bytes(r["payload"]),
            options=r["options"],
            priority=r["priority"],
            eta=r["eta"],
            enqueued_at=r["enqueued_at"],
            result_ttl=r["result_ttl"],
            concurrency_key=r["concurrency_key"],
            concurrency_limit=r["concurrency_limit"],
            function=r["function"],
        )
        record = StoredTask(task, r["attempts"], r["retries"], r["error"], r["traceback"])
        held.append(HeldTask(record, ClaimRef(r["id"], r["fence"])))
    return held


async def put_stored(conn: Any, sql: MoveStatements, records: Sequence[StoredTask]) -> list[bool]:
    """Insert the records in one transaction; ids still known are left alone."""
    if not records:
        return []
    columns: list[list[Any]] = [[] for _ in range(15)]
    for item in records:
        for column, value in zip(columns, item.row(), strict=True):
            column.append(value)
    async with conn.transaction():
        rows = await conn.fetch(sql.put_stored, *columns)
        stored = {r[0] for r in rows if r[0] is not None}
        if stored:
            undone = await conn.fetch(sql.undo_finished, list(stored))
            stored -= {r[0] for r in undone}
    return [item.task.id in stored for item in records]


async def drop_held(conn: Any, sql: MoveStatements, refs: Sequence[ClaimRef]) -> list[bool]:
    """Delete the tasks still held under these claims, in one statement."""
    rows = await conn.fetch(
        sql.drop_held, [r.task_id for r in refs], [r.fencing_token for r in refs]
    )
    dropped = {r[0] for r in rows}
    return [r.task_id in dropped for r in refs]
