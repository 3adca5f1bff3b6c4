"""Requeueing on the NATS backend: a failed or cancelled record, which kept its payload and
options, becomes pending again by a write conditioned on the revision read, as a new life of its
id (a new generation, so a work message of its old life left in the stream is dropped), with a
new listing entry; then its work message is published as an enqueue publishes it, which wakes
idle workers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sitq.backends.nats._client import Client
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._consumers import Consumers
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import (
    HAS_PAYLOAD,
    LIST_SEQ,
    OPTIONS,
    PRIORITY,
    QUEUE,
    STATE,
    encode,
    expired,
    message_body,
    requeued,
    task_key,
)
from sitq.errors import BackendError
from sitq.models import RequeueOutcome

_REQUEUABLE = ("failed", "cancelled")
_TRIES = 20


class Requeuer:
    """The requeue step of one backend."""

    def __init__(
        self,
        client: Client,
        clock: ServerClock,
        consumers: Consumers,
        index: Index,
        generation: Callable[[], str],
    ) -> None:
        self._client = client
        self._clock = clock
        self._consumers = consumers
        self._index = index
        self._generation = generation

    async def requeue(self, task_ids: Sequence[str]) -> list[RequeueOutcome]:
        """Make each failed or cancelled task pending again, due now."""
        return [await self._one(task_id) for task_id in task_ids]

    async def _one(self, task_id: str) -> RequeueOutcome:
        client, index = self._client, self._index
        key = task_key(task_id)
        for _ in range(_TRIES):
            (got,) = await client.get_many([key])
            now = self._clock.now()
            if got is None or expired(got[0], now):
                return RequeueOutcome.NOT_FOUND
            rec, payload, rev = got
            if (
                rec.get(STATE) not in _REQUEUABLE
                or not rec.get(HAS_PAYLOAD)
                or not isinstance(rec.get(OPTIONS), str)
            ):
                return RequeueOutcome.REFUSED
            queue, priority = str(rec[QUEUE]), int(rec[PRIORITY])
            token = index.token()
            entry = ack_seq(
                await client.one(
                    *index.entry(index.pending_subject(queue, priority, False), key, token)
                )
            )
            new = requeued(rec, now, self._generation(), token)
            new[LIST_SEQ] = entry
            head = encode(new)
            new_rev = ack_seq(await client.one(*client.write(key, encode(new, payload), rev)))
            if not new_rev:
                await index.drop_now([entry])
                continue  # changed meanwhile (expired, purged, requeued): look again
            index.drop([int(rec.get(LIST_SEQ) or 0)])
            subject = f"{client.subject_prefix}.q.{queue}.{priority}"
            ack_seq(await client.one(subject, message_body(head, payload, new_rev), None))
            await self._consumers.announce([(queue, priority)])
            return RequeueOutcome.REQUEUED
        raise BackendError(f"could not requeue task {task_id!r}: its record kept changing")
