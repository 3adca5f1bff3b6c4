"""Enqueue on the NATS backend: per task a listing entry (``_index``), a record in the bucket
(which keeps the entry's sequence and the payload) and a message on
``sitq.<stream>.q.<queue>.<priority>``. NATS 2.9 cannot write the two atomically; the order of
the writes makes a failure between them harmless (see "Two writes per enqueue" in
``backend``)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sitq.backends.nats._client import Client, Request
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._consumers import Consumers
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import (
    LIST_SEQ,
    LIST_TOKEN,
    encode,
    expired,
    message_body,
    new_record,
    task_key,
)
from sitq.errors import BackendError
from sitq.models import NewTask


class Enqueuer:
    """The enqueue step of one backend."""

    def __init__(
        self, client: Client, clock: ServerClock, consumers: Consumers, index: Index
    ) -> None:
        self._client = client
        self._index = index
        self._clock = clock
        self._consumers = consumers
        self._generation_prefix = secrets.token_hex(4)
        self._generations = 0

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store records and publish messages; an id still known is left alone.

        NATS 2.9 cannot write two messages atomically, so the order of the two writes is
        chosen so that a failure between them leaves at worst a message without a record
        (dropped by the worker that receives it) and, for generated ids only, a record that
        nobody can know the id of. An explicit id is therefore always safe to enqueue again
        after an error.
        """
        if not tasks:
            return []
        nc = self._client.connection()
        for task in tasks:
            if len(task.payload) + 2048 > nc.max_payload:
                raise BackendError(
                    f"task {task.id!r}: its payload of {len(task.payload)} bytes exceeds the "
                    f"NATS server's max_payload ({nc.max_payload} bytes)"
                )
        now = self._clock.now()
        built = [self._new_record(t, now) for t in tasks]
        stored = [False] * len(tasks)
        fresh = [i for i, t in enumerate(tasks) if t.fresh_id]
        explicit = [i for i, t in enumerate(tasks) if not t.fresh_id]
        if len(fresh) == 1 and not explicit:
            await self._enqueue_one(tasks[fresh[0]], built[fresh[0]])
            stored[fresh[0]] = True
        elif fresh:
            await self._enqueue_fresh(tasks, built, fresh, stored)
        if explicit:
            await self._enqueue_explicit(tasks, built, explicit, stored, now)
        await self._consumers.announce({(t.queue, t.priority) for t in tasks})
        return stored

    def _new_record(self, task: NewTask, now: float) -> _Built:
        """The first record of a task, and its listing entry's subject."""
        enqueued = now if self._clock.offset else task.enqueued_at
        eta = enqueued if task.eta <= task.enqueued_at else task.eta
        rec = new_record(task, enqueued, eta, self.generation(), self._index.token())
        subject = self._index.pending_subject(task.queue, task.priority, eta > now)
        return _Built(rec, subject)

    def new_record(self, task: NewTask, now: float) -> _Built:
        """The first record of a task as a new life of its id, and its listing entry's
        subject (for ``_replace``)."""
        return self._new_record(task, now)

    def generation(self) -> str:
        """A token unique to one life of a task id (its record and its message share it)."""
        self._generations += 1
        return f"{self._generation_prefix}{self._generations:x}"

    def _entry(self, task: NewTask, built: _Built) -> Request:
        return self._index.entry(built.subject, task_key(task.id), built.rec[LIST_TOKEN])

    def _message(self, task: NewTask, built: _Built, rev: int) -> Request:
        """The work message of a task: its first record, with the record's revision when
        known, then the payload."""
        subject = f"{self._client.subject_prefix}.q.{task.queue}.{task.priority}"
        return (subject, message_body(encode(built.rec), task.payload, rev), None)

    def _record(self, task: NewTask, built: _Built, last: int | None) -> Request:
        return self._client.write(task_key(task.id), encode(built.rec, task.payload), last)

    async def _entries(self, tasks: Sequence[NewTask], built: list[_Built], idx: list[int]) -> None:
        """Write the listing entries of the tasks ``idx``; each record then keeps its own."""
        acks = await self._client.many(self._entry(tasks[i], built[i]) for i in idx)
        for i, ack in zip(idx, acks, strict=True):
            built[i].rec[LIST_SEQ] = ack_seq(ack)

    async def _enqueue_one(self, task: NewTask, built: _Built) -> None:
        """The listing entry, then record and message in one round trip. A message that
        arrives before its record waits for it (see ``_claim``); a record whose message
        failed is removed again."""
        client = self._client
        await self._entries([task], [built], [0])
        write, publish = await client.many(
            [self._record(task, built, 0), self._message(task, built, 0)]
        )
        rev = ack_seq(write)
        try:
            ack_seq(publish)
        except BackendError:
            if rev:
                await client.delete_seq(rev)
            await self._index.drop_now([built.rec[LIST_SEQ]])
            raise
        if not rev:
            await self._index.drop_now([built.rec[LIST_SEQ]])
            raise BackendError(f"task id {task.id!r} exists already although it was generated")

    async def _enqueue_fresh(
        self, tasks: Sequence[NewTask], built: list[_Built], indexes: list[int], stored: list[bool]
    ) -> None:
        """Listing entries, records, then the messages, which carry each record's revision so
        that a worker claims without reading the record first. (A generated id is new: its
        record needs no check that the key is free.)"""
        client = self._client
        await self._entries(tasks, built, indexes)
        acks = await client.many(self._record(tasks[i], built[i], None) for i in indexes)
        revs = [ack_seq(a) for a in acks]
        ok = [(i, rev) for i, rev in zip(indexes, revs, strict=True) if rev]
        try:
            published = await client.many(self._message(tasks[i], built[i], rev) for i, rev in ok)
            for reply in published:
                ack_seq(reply)
        except BackendError:
            await asyncio.gather(*(client.delete_seq(rev) for _, rev in ok), return_exceptions=True)
            await self._index.drop_now(built[i].rec[LIST_SEQ] for i in indexes)
            raise
        for i, _ in ok:
            stored[i] = True

    async def _enqueue_explicit(
        self,
        tasks: Sequence[NewTask],
        built: list[_Built],
        indexes: list[int],
        stored: list[bool],
        now: float,
    ) -> None:
        """Ids the caller chose: skip those still known; publish the listing entries and the
        messages, then create (or replace an expired) record. A message whose record lost a
        race is dropped, and so is its entry."""
        client = self._client
        targets: list[tuple[int, int]] = []  # (task index, revision the write expects)
        found = await client.get_many([task_key(tasks[i].id) for i in indexes])
        for i, got in zip(indexes, found, strict=True):
            if got is None:
                targets.append((i, 0))
            elif expired(got[0], now):
                targets.append((i, got[2]))
        if not targets:
            return
        replies = await client.many(
            [self._entry(tasks[i], built[i]) for i, _ in targets]
            + [self._message(tasks[i], built[i], 0) for i, _ in targets]
        )
        for (i, _), reply in zip(targets, replies, strict=False):
            built[i].rec[LIST_SEQ] = ack_seq(reply)
        for reply in replies[len(targets) :]:
            ack_seq(reply)
        acks = await client.many(self._record(tasks[i], built[i], last) for i, last in targets)
        lost = []
        for (i, _), ack in zip(targets, acks, strict=True):
            stored[i] = bool(ack_seq(ack))
            if not stored[i]:
                lost.append(built[i].rec[LIST_SEQ])
        self._index.drop(lost)


@dataclass(slots=True)
class _Built:
    """A task's first record (its ``LIST_SEQ`` set once its entry is written) and the
    subject of its listing entry."""

    rec: dict[str, Any]
    subject: str
