"""Debounce on the NATS backend (``enqueue_replacing``): one task stored, or the pending or
finished record of its id replaced, by a write conditioned on the revision read, as a new life
of the id (a new generation), with a new listing entry; then its work message is published.

The conditioned write is the atomic step. A claim is a conditioned write on the same record:
of the two, the one that writes first wins and the other's condition fails. A claim that lost
reads the record again and finds the new generation, which is not its message's: it drops that
message, so the replaced payload never runs. A replace that lost reads the record again and
finds it running (nothing changes) or pending again (it retries). The record is written before
the message, as ``_requeue`` does: a message published first could reach a worker while the
record still holds the old generation, and be dropped as an old life's. A failure between the
two writes leaves a pending record without a message; the call raises, and enqueueing the id
again (which replaces the record and publishes anew) repairs it.
"""

from __future__ import annotations

from sitq.backends.nats._client import Client
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._consumers import Consumers
from sitq.backends.nats._enqueue import Enqueuer
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import (
    ENQUEUED_AT,
    LIST_SEQ,
    LIST_TOKEN,
    QUEUE,
    STATE,
    encode,
    expired,
    message_body,
    task_key,
)
from sitq.errors import BackendError
from sitq.models import NewTask, ReplaceOutcome

_TRIES = 20


class Replacer:
    """The ``enqueue_replacing`` step of one backend."""

    def __init__(
        self,
        client: Client,
        clock: ServerClock,
        consumers: Consumers,
        index: Index,
        enqueuer: Enqueuer,
    ) -> None:
        self._client = client
        self._clock = clock
        self._consumers = consumers
        self._index = index
        self._enqueuer = enqueuer

    async def replace(self, task: NewTask) -> ReplaceOutcome:
        """Store ``task``, or replace the pending or finished record of its id."""
        client, index = self._client, self._index
        nc = client.connection()
        if len(task.payload) + 2048 > nc.max_payload:
            raise BackendError(
                f"task {task.id!r}: its payload of {len(task.payload)} bytes exceeds the "
                f"NATS server's max_payload ({nc.max_payload} bytes)"
            )
        key = task_key(task.id)
        for _ in range(_TRIES):
            (got,) = await client.get_many([key])
            now = self._clock.now()
            built = self._enqueuer.new_record(task, now)
            outcome = ReplaceOutcome.STORED
            last = 0 if got is None else got[2]
            old_entry = 0
            if got is not None and not expired(got[0], now):
                rec = got[0]
                if rec.get(QUEUE) != task.queue:
                    return ReplaceOutcome.OTHER_QUEUE
                state = rec.get(STATE)
                if state == "running":
                    return ReplaceOutcome.RUNNING
                if state == "pending":
                    outcome = ReplaceOutcome.REPLACED_PENDING
                    built.rec[ENQUEUED_AT] = rec.get(ENQUEUED_AT, built.rec[ENQUEUED_AT])
                else:
                    outcome = ReplaceOutcome.REPLACED_FINISHED
                old_entry = int(rec.get(LIST_SEQ) or 0)
            entry = ack_seq(
                await client.one(*index.entry(built.subject, key, built.rec[LIST_TOKEN]))
            )
            built.rec[LIST_SEQ] = entry
            head = encode(built.rec)
            rev = ack_seq(
                await client.one(*client.write(key, encode(built.rec, task.payload), last))
            )
            if not rev:
                await index.drop_now([entry])
                continue  # changed meanwhile (claimed, settled, replaced): look again
            index.drop([old_entry])
            subject = f"{client.subject_prefix}.q.{task.queue}.{task.priority}"
            ack_seq(await client.one(subject, message_body(head, task.payload, rev), None))
            await self._consumers.announce([(task.queue, task.priority)])
            return outcome
        raise BackendError(f"could not replace task {task.id!r}: its record kept changing")
