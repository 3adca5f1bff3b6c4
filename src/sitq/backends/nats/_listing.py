"""Listing and purging tasks on the NATS backend, through the listing index (``_index``).

Order (a stream keeps the order its entries were written in, and reads forward only):

* pending: priority high to low; within a priority, first the tasks that were due when they
  became pending, in the order they became pending (enqueued, retried, released, requeued),
  then the tasks scheduled for later, in the order they were scheduled. Each group is one
  subject per (queue, priority), read from a sequence on.
* running: in the order the claims were written, i.e. by ``started_at`` (up to the
  milliseconds between the clocks of workers claiming at the same moment).
* finished: most recent first, in the order the outcomes were written, i.e. by
  ``finished_at`` descending (up to the same milliseconds).

The position ``after`` is JSON: ``[priority, group, sequence]`` for pending (group 0 due, 1
scheduled), ``[sequence]`` otherwise. Entries are checked against their records (one batched
read per page), so a page never lists a task that has left the state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sitq.backends.nats._client import Client, Got
from sitq.backends.nats._index import STALE_AFTER, Found, Index
from sitq.backends.nats._records import LIST_TOKEN, STATE, expired, snapshot_of
from sitq.errors import ConfigurationError
from sitq.models import SnapshotPage, TaskSnapshot, TaskStatus

_Position = tuple[int, int, int]
"""(priority, group, sequence) of a pending entry; (0, 0, sequence) of any other."""


def _parse_after(after: str | None, status: TaskStatus) -> _Position | None:
    if after is None:
        return None
    try:
        raw = json.loads(after)
        if status is TaskStatus.PENDING:
            prio, group, seq = (int(x) for x in raw)
            return prio, group, seq
        (seq,) = (int(x) for x in raw)
        return 0, 0, seq
    except (ValueError, TypeError):
        raise ConfigurationError(f"not a NATS listing position: {after!r}") from None


def _encode(pos: _Position, status: TaskStatus) -> str:
    return json.dumps(list(pos) if status is TaskStatus.PENDING else [pos[2]])


class Lister:
    """``list_tasks`` and ``purge_tasks`` of one backend."""

    def __init__(self, client: Client, index: Index) -> None:
        self._client = client
        self._index = index

    async def _check(
        self, found: Sequence[Found], status: TaskStatus, now: float
    ) -> list[tuple[Found, Got | None]]:
        """Each entry with its record if the record still stands for it (else ``None``);
        stale entries old enough are deleted."""
        if not found:
            return []
        records = await self._client.get_many([f.key for f in found])
        out: list[tuple[Found, Got | None]] = []
        stale = []
        for entry, got in zip(found, records, strict=True):
            rec = got[0] if got is not None else None
            live = (
                rec is not None
                and rec.get(STATE) == status.value
                and rec.get(LIST_TOKEN) == entry.token
            )
            if not live and entry.stamp and now - entry.stamp > STALE_AFTER:
                stale.append(entry.seq)
            out.append((entry, got if live else None))
        self._index.drop(stale)
        return out

    async def _groups(self, queue: str | None) -> list[tuple[int, int, str]]:
        """The pending groups holding entries, in listing order: (priority, group, subject)."""
        subjects = await self._index.subjects(f"{self._index.prefix}.*.{queue or '*'}.*")
        priorities: set[tuple[int, int]] = set()
        for subject, count in subjects.items():
            parts = subject.rsplit(".", 3)
            if count and len(parts) == 4 and parts[1] in ("p", "w"):
                try:
                    priorities.add((int(parts[3]), 0 if parts[1] == "p" else 1))
                except ValueError:
                    continue
        return [
            (prio, group, self._index.pending_subject(queue or "*", prio, bool(group)))
            for prio, group in sorted(priorities, key=lambda pg: (-pg[0], pg[1]))
        ]

    async def list_tasks(
        self, status: TaskStatus, queue: str | None, limit: int, after: str | None, now: float
    ) -> SnapshotPage:
        """A page of ``status`` (see the module docstring for the order and positions)."""
        self._client.connection()
        start = _parse_after(after, status)
        rows: list[tuple[_Position, TaskSnapshot]] = []
        want = limit + 1
        if status is TaskStatus.PENDING:
            for prio, group, subject in await self._groups(queue):
                if start is not None and (-prio, group) < (-start[0], start[1]):
                    continue
                seq = start[2] + 1 if start is not None and (prio, group) == start[:2] else 1
                while len(rows) < want:
                    found = await self._index.forward(subject, seq, want - len(rows))
                    if not found:
                        break
                    for entry, got in await self._check(found, status, now):
                        if got is not None:
                            rows.append(((prio, group, entry.seq), _snap(got)))
                    seq = found[-1].seq + 1
                if len(rows) >= want:
                    break
        elif status is TaskStatus.RUNNING:
            subject = self._index.subject(status, queue)
            seq = start[2] + 1 if start is not None else 1
            while len(rows) < want:
                found = await self._index.forward(subject, seq, want - len(rows))
                if not found:
                    break
                for entry, got in await self._check(found, status, now):
                    if got is not None:
                        rows.append(((0, 0, entry.seq), _snap(got)))
                seq = found[-1].seq + 1
        else:
            subject = self._index.subject(status, queue)
            before = start[2] if start is not None else None
            while len(rows) < want:
                found = await self._index.backward(subject, before, want - len(rows))
                if not found:
                    break
                for entry, got in await self._check(found, status, now):
                    if got is not None and not expired(got[0], now):
                        rows.append(((0, 0, entry.seq), _snap(got)))
                before = found[-1].seq
        page = rows[:limit]
        more = len(rows) > limit
        return SnapshotPage(
            tasks=[snap for _, snap in page],
            after=_encode(page[-1][0], status) if more else None,
        )

    async def purge_tasks(
        self, queue: str, status: TaskStatus, limit: int, now: float
    ) -> tuple[int, list[tuple[str, int]]]:
        """Delete up to ``limit`` records of ``queue`` in ``status`` (never running) with their
        entries; the count, and (key, revision) of each record deleted."""
        self._client.connection()
        if status is TaskStatus.RUNNING:
            return 0, []
        if status is TaskStatus.PENDING:
            subjects = [s for _, _, s in await self._groups(queue)]
        else:
            subjects = [self._index.subject(status, queue)]
        deleted: list[tuple[str, int]] = []
        for subject in subjects:
            seq = 1
            while len(deleted) < limit:
                found = await self._index.forward(subject, seq, min(limit - len(deleted), 500))
                if not found:
                    break
                checked = await self._check(found, status, now)
                live = [(entry, got) for entry, got in checked if got is not None]
                revs = [got[2] for _, got in live]
                gone = await self._client.delete_many_each(revs)
                for (entry, got), ok in zip(live, gone, strict=True):
                    if ok:
                        deleted.append((entry.key, got[2]))
                await self._index.drop_now(
                    e.seq for (e, got), ok in zip(live, gone, strict=True) if ok
                )
                seq = found[-1].seq + 1
        return len(deleted), deleted


def _snap(got: Got) -> TaskSnapshot:
    """A listed task's snapshot (never with its value)."""
    rec: dict[str, Any] = got[0]
    return snapshot_of(rec, b"")
