"""The operator's calls on top of the backend steps: listing pages across statuses with one
opaque cursor, requeueing and purging in bounded batches, and reading worker records.

Nothing here reads a payload: listings come from the backend's snapshots, which never carry
one, so no inspection can run code through a stored call.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sitq.backends.base import Backend
from sitq.errors import ConfigurationError
from sitq.models import (
    RequeueOutcome,
    TaskInfo,
    TaskPage,
    TaskStatus,
    WorkerInfo,
    WorkerRecord,
    to_datetime,
)

LIST_ORDER = (
    TaskStatus.RUNNING,
    TaskStatus.PENDING,
    TaskStatus.FAILED,
    TaskStatus.CANCELLED,
    TaskStatus.SUCCESS,
)
"""The order of the status groups when a listing covers several."""

PURGE_STATES: dict[str, tuple[TaskStatus, ...]] = {
    "pending": (TaskStatus.PENDING,),
    "failed": (TaskStatus.FAILED,),
    "cancelled": (TaskStatus.CANCELLED,),
    "success": (TaskStatus.SUCCESS,),
    "finished": (TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.SUCCESS),
}
"""What ``purge(status=...)`` accepts, and the states each name removes."""

MAX_LIMIT = 1000
_BATCH = 500


def parse_statuses(
    status: str | TaskStatus | Iterable[str | TaskStatus] | None,
) -> list[TaskStatus]:
    """The statuses a listing covers, in group order; ``None`` is all of them."""
    if status is None:
        return list(LIST_ORDER)
    items = [status] if isinstance(status, str) else list(status)
    wanted = set()
    for item in items:
        try:
            wanted.add(TaskStatus(item))
        except ValueError:
            raise ConfigurationError(
                f"status={item!r} is not a task status: use one of "
                f"{', '.join(s.value for s in LIST_ORDER)}"
            ) from None
    if not wanted:
        raise ConfigurationError("status=[] lists nothing: give one status, several, or None")
    return [s for s in LIST_ORDER if s in wanted]


def check_queue_name(queue: object, *, required: bool) -> str | None:
    """A queue filter: a non-empty name (or ``None`` when not ``required``)."""
    if queue is None and not required:
        return None
    if not isinstance(queue, str) or not queue:
        raise ConfigurationError(f"queue must be a queue name, not {queue!r}")
    return queue


def check_limit(limit: object) -> int:
    """A page size from 1 to 1000."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ConfigurationError(
            f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r}"
        )
    return limit


def _encode_cursor(status: TaskStatus, after: str | None) -> str:
    raw = json.dumps([status.value, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, statuses: Sequence[TaskStatus]) -> tuple[TaskStatus, str | None]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value, after = json.loads(base64.urlsafe_b64decode(padded.encode()))
        status = TaskStatus(value)
        if after is not None and not isinstance(after, str):
            raise ValueError(after)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ConfigurationError(
            f"cursor={cursor!r} is not a cursor list_tasks returned: pass back next_cursor "
            "as it is, or None for the first page"
        ) from None
    if status not in statuses:
        raise ConfigurationError(
            f"cursor={cursor!r} belongs to a listing of other statuses: list with the same "
            "status= as the page that returned it"
        )
    return status, after


async def list_page(
    backend: Backend,
    statuses: Sequence[TaskStatus],
    queue: str | None,
    limit: int,
    cursor: str | None,
    now: float,
) -> TaskPage:
    """One page across the status groups, and the cursor of the next (``None``: the end), as
    of ``now``."""
    if cursor is None:
        index, after = 0, None
    else:
        status, after = _decode_cursor(cursor, statuses)
        index = statuses.index(status)
    tasks: list[TaskInfo] = []
    while index < len(statuses):
        status = statuses[index]
        page = await backend.list_tasks(status, queue, limit - len(tasks), after, now)
        tasks.extend(TaskInfo.from_snapshot(snap) for snap in page.tasks)
        if page.after is not None:
            return TaskPage(tasks=tasks, next_cursor=_encode_cursor(status, page.after))
        index, after = index + 1, None
        if len(tasks) >= limit:
            break
    # The page is full at the end of a group: a next page exists if a later group has a task.
    for later in statuses[index:]:
        probe = await backend.list_tasks(later, queue, 1, None, now)
        if probe.tasks:
            return TaskPage(tasks=tasks, next_cursor=_encode_cursor(later, None))
    return TaskPage(tasks=tasks, next_cursor=None)


async def requeue_all(
    backend: Backend, status: TaskStatus, queue: str | None, clock: Callable[[], float]
) -> int:
    """Requeue every task in ``status`` (failed or cancelled), a page at a time (``clock``
    tells the time)."""
    count = 0
    after = None
    while True:
        page = await backend.list_tasks(status, queue, _BATCH, after, clock())
        if not page.tasks:
            return count
        outcomes = await backend.requeue([t.task_id for t in page.tasks], clock())
        count += sum(o is RequeueOutcome.REQUEUED for o in outcomes)
        if page.after is None:
            return count
        # Requeued tasks left the listing; those refused (raced) stay and are passed over.
        after = page.after


async def purge_all(backend: Backend, queue: str, states: Sequence[TaskStatus]) -> int:
    """Remove every task of ``queue`` in ``states``, in bounded batches."""
    count = 0
    for state in states:
        while removed := await backend.purge_tasks(queue, state, _BATCH):
            count += removed
    return count


def worker_info(record: WorkerRecord) -> WorkerInfo | None:
    """A worker record as the engine wrote it; ``None`` for one it cannot read."""
    try:
        data: dict[str, Any] = json.loads(record.data)
        return WorkerInfo(
            worker_id=record.worker_id,
            hostname=str(data["hostname"]),
            pid=int(data["pid"]),
            kind=str(data["kind"]),
            queues=tuple(str(q) for q in data["queues"]),
            concurrency=int(data["concurrency"]),
            running=int(data["running"]),
            processed=int(data["processed"]),
            failed=int(data["failed"]),
            started_at=to_datetime(float(data["started_at"])),
            last_seen=to_datetime(float(data["last_seen"])),
        )
    except (KeyError, TypeError, ValueError):
        return None
