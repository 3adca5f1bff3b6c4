"""One page of ``list_tasks`` from the per-queue pages of the listing scripts.

Each queue's keys live in a slot of their own (a Redis Cluster has no key that spans queues),
so a listing of every queue reads a page from each queue's index, in one round trip, and
merges them here. A queue's page may stop short of the limit (its script looks at a bounded
number of entries, passing over stale ones): it then reports how far it read, and the merged
page goes no further than the shortest such read, so that no task is skipped.

Positions: a pending task's is its rank (priority, due time, enqueue order, id; the same bytes
order Redis keeps), a running or finished task's is its score and id (``"<score> <id>"``).

The rows are merged by position alone; only those the page keeps are read into snapshots (a
listing of every queue gets up to a page from each queue, most of which it leaves).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sitq.backends.redis._records import page_rows, snapshot
from sitq.models import SnapshotPage

__all__ = ["QueuePage", "merge_pages", "queue_page"]

Key = tuple[float, bytes]


@dataclass(frozen=True, slots=True)
class QueuePage:
    """One queue's page: rows (position, task id and the task's fields as the script returned
    them, in order) and how far the script read (``None``: to the end of the index)."""

    queue: str
    rows: list[tuple[bytes, str, Sequence[Any]]]
    frontier: bytes | None


def queue_page(queue: str, reply: Sequence[Any]) -> QueuePage:
    """A listing script's reply as a queue's page."""
    frontier = bytes(reply[0])
    return QueuePage(queue, page_rows(reply), frontier or None)


def _key(position: bytes, task_id: str | None, scored: bool) -> Key:
    """A position in listing order: a rank as it is, a score with its id."""
    if not scored:
        return (0.0, position)
    if task_id is None:  # a frontier: "<score> <id>"
        score, _, rest = position.partition(b" ")
        return (float(score), rest)
    return (float(position), task_id.encode())


def _text(position: bytes, task_id: str | None, scored: bool) -> str:
    if scored and task_id is not None:
        return f"{position.decode()} {task_id}"
    return position.decode()


def merge_pages(pages: Sequence[QueuePage], limit: int, scored: bool) -> SnapshotPage:
    """The first ``limit`` rows of the queues' pages in listing order, and the position after
    them (``None`` when every queue was read to its end and nothing is left)."""
    bound: tuple[Key, str] | None = None
    for page in pages:
        if page.frontier is not None:
            key = _key(page.frontier, None, scored)
            if bound is None or key < bound[0]:
                bound = (key, _text(page.frontier, None, scored))
    rows = [
        (_key(position, task_id, scored), position, task_id, page.queue, fields)
        for page in pages
        for position, task_id, fields in page.rows
    ]
    if bound is not None:
        rows = [row for row in rows if row[0] <= bound[0]]
    rows.sort(key=lambda row: row[0])
    taken = rows[:limit]
    if len(rows) > limit:
        _, position, task_id, _, _ = taken[-1]
        after: str | None = _text(position, task_id, scored)
    else:
        after = None if bound is None else bound[1]
    snapshots = [snapshot(task_id, queue, fields) for _, _, task_id, queue, fields in taken]
    return SnapshotPage([snap for snap in snapshots if snap is not None], after)
