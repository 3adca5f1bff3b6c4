"""The format migration of the NATS backend, run by ``connect()``.

A store written by format 1 (before the listing index) has task records without a listing
entry. The bucket key ``_.format`` (``_records.FORMAT_KEY``) marks a store whose records are
all of the current format; a client that finds it missing or older walks every record of the
bucket once (``_stats.each_record``) and, for each task record without a listing token, writes
the entry of the task's current state, then records the entry's token and sequence in the
record by a write conditioned on the revision it read. It then sets the marker, conditioned on
the marker's revision it read.

The migration is idempotent and resumable: a record that has a listing token is skipped, so a
migration cut short leaves nothing wrong and the next ``connect()`` carries on; several clients
connecting at once may each walk the bucket, and of two writes to one record only one lands.
A record that changed meanwhile (a live worker claimed or settled it) is read again and
migrated in its new state, or skipped if its writer listed it; the losing entry is deleted.

A migrated finished record has a new revision, so it is added to the expiry index again (its
old expiry entry names a revision that is gone, which a purge skips). Records of format 1 did
not keep the payload of a pending task: a failed or cancelled task stored before the upgrade,
or a pending one of then cancelled before it runs, cannot be requeued (``requeue`` refuses it),
though it is listed like any other.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sitq.backends.nats._client import CAS_TRIES, Client
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._expiry import ExpiryIndex
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import (
    ETA,
    EXPIRES_AT,
    FENCE,
    FINAL,
    FORMAT,
    FORMAT_KEY,
    FORMAT_VERSION,
    HAS_PAYLOAD,
    HAS_VALUE,
    LIST_SEQ,
    LIST_TOKEN,
    PRIORITY,
    QUEUE,
    RESULT_TTL,
    STATE,
    TASK_ID,
    decode,
    encode,
    expired,
    expiry_class,
    running_token,
)
from sitq.backends.nats._stats import each_record
from sitq.errors import BackendError
from sitq.models import TaskStatus

log = logging.getLogger("sitq.nats")

_TRIES: Final = 5
"""Writes of one record before leaving it (it keeps changing: its writers list it anyway)."""


@dataclass(slots=True)
class _Task:
    """A task record to migrate: its key, the record and tail as read, and their revision."""

    key: str
    rec: dict[str, Any]
    tail: bytes
    rev: int


class Migrator:
    """Brings a store up to the current format (see the module docstring)."""

    def __init__(
        self, client: Client, clock: ServerClock, index: Index, expiry: ExpiryIndex
    ) -> None:
        self._client = client
        self._clock = clock
        self._index = index
        self._expiry = expiry

    async def ensure(self) -> int:
        """Migrate the store if its marker is missing or older than ``FORMAT``; the number of
        records migrated by this call."""
        client = self._client
        (marker,) = await client.read_meta([FORMAT_KEY])
        if _version(marker.head if marker else None) >= FORMAT:
            return 0
        migrated = await self.migrate()
        last = marker.rev if marker is not None else 0
        for _ in range(CAS_TRIES):
            body = encode({FORMAT_VERSION: FORMAT})
            if ack_seq(await client.one(*client.write(FORMAT_KEY, body, last))):
                break
            (marker,) = await client.read_meta([FORMAT_KEY])
            if _version(marker.head if marker else None) >= FORMAT:
                break  # another client finished first
            last = marker.rev if marker is not None else 0
        else:
            raise BackendError("NATS: could not set the store's format marker")
        if migrated:
            log.info("listed %d tasks stored by an earlier version of sitq", migrated)
        return migrated

    async def migrate(self) -> int:
        """Give every task record without a listing entry its entry; how many were given."""
        done = 0
        async with contextlib.aclosing(each_record(self._client)) as batches:
            async for batch in batches:
                todo = []
                for raw in batch:
                    if raw.key.startswith("_."):
                        continue  # sitq's own records
                    with contextlib.suppress(ValueError):
                        rec, tail = decode(raw.data)
                        todo.append(_Task(raw.key, rec, tail, raw.rev))
                done += await self._migrate(todo)
        return done

    async def _migrate(self, tasks: list[_Task]) -> int:
        """Migrate a batch of records, reading again and retrying those that changed."""
        client = self._client
        done = 0
        for _ in range(_TRIES):
            now = self._clock.now()
            tasks = [t for t in tasks if _needs_entry(t.rec, now)]
            if not tasks:
                break
            tokens = [_token(t.rec, self._index) for t in tasks]
            acks = await client.many(
                self._index.entry(self._subject(t.rec, now), t.key, token)
                for t, token in zip(tasks, tokens, strict=True)
            )
            entries = [ack_seq(a) for a in acks]
            news = [
                {**t.rec, LIST_TOKEN: token, LIST_SEQ: entry}
                for t, token, entry in zip(tasks, tokens, entries, strict=True)
            ]
            writes = await client.many(
                client.write(t.key, _encoded(new, t.tail), t.rev)
                for t, new in zip(tasks, news, strict=True)
            )
            changed: list[_Task] = []
            lost: list[int] = []
            expiring: dict[str, list[list[Any]]] = {}
            for t, new, entry, ack in zip(tasks, news, entries, writes, strict=True):
                rev = ack_seq(ack)
                if not rev:
                    lost.append(entry)
                    changed.append(t)
                    continue
                done += 1
                if new[STATE] in FINAL and isinstance(new.get(EXPIRES_AT), int | float):
                    expiring.setdefault(expiry_class(new[RESULT_TTL]), []).append(
                        [t.key, rev, new[EXPIRES_AT], entry]
                    )
            await self._index.drop_now(lost)
            if expiring:
                await self._expiry.add(expiring)
            tasks = await self._reread(changed)
        return done

    async def _reread(self, tasks: Sequence[_Task]) -> list[_Task]:
        """The records of ``tasks`` as they are now (those still there)."""
        if not tasks:
            return []
        found = await self._client.get_many([t.key for t in tasks])
        return [
            _Task(t.key, got[0], got[1], got[2])
            for t, got in zip(tasks, found, strict=True)
            if got is not None
        ]

    def _subject(self, rec: dict[str, Any], now: float) -> str:
        """The subject of the listing entry of a record's current state."""
        status = TaskStatus(rec[STATE])
        if status is TaskStatus.PENDING:
            return self._index.pending_subject(
                str(rec[QUEUE]), int(rec[PRIORITY]), float(rec[ETA]) > now
            )
        return self._index.state_subject(status, str(rec[QUEUE]))


def _version(head: dict[str, Any] | None) -> int:
    """The format a marker names (0: none)."""
    value = (head or {}).get(FORMAT_VERSION)
    return value if type(value) is int else 0


def _needs_entry(rec: dict[str, Any], now: float) -> bool:
    """Whether a record is a task record with no listing entry that a listing would show."""
    try:
        TaskStatus(str(rec.get(STATE)))
        str(rec[TASK_ID]), str(rec[QUEUE]), int(rec[PRIORITY]), float(rec[ETA])
    except (ValueError, KeyError, TypeError):
        return False
    return LIST_TOKEN not in rec and not expired(rec, now)


def _token(rec: dict[str, Any], index: Index) -> str:
    """The listing token a migrated record gets (a running one's is its claim's, as a claim
    would give it)."""
    if rec[STATE] == TaskStatus.RUNNING.value and type(rec.get(FENCE)) is int:
        return running_token(rec)
    return index.token()


def _encoded(rec: dict[str, Any], tail: bytes) -> bytes:
    """A migrated record as written, with its tail (a value or payload) as it was."""
    keeps_tail = bool(tail) or bool(rec.get(HAS_VALUE)) or bool(rec.get(HAS_PAYLOAD))
    return encode(rec, tail if keeps_tail else None)
