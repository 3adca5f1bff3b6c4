"""The NATS backend's expiry index: finishing a task appends ``(key, revision, expires_at,
listing entry)`` to
``sitq.<stream>.x.<ttl class>``, so that tasks with the same ``result_ttl`` (to 10 s) expire in
the order they finish, and a purge reads each class from its oldest entry and stops at the first
one still alive. A record is deleted by its revision, which does nothing if the id has been
enqueued again since."""

from __future__ import annotations

import json
import logging
from typing import Any

from sitq.backends.nats._client import Client
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._consumers import MAX_FETCH, Consumers
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import INDEX_EXPIRES, INDEX_KEYS
from sitq.errors import BackendError

log = logging.getLogger("sitq.nats")


class ExpiryIndex:
    """Appends to the expiry index and purges what it lists as expired."""

    def __init__(
        self, client: Client, clock: ServerClock, consumers: Consumers, index: Index
    ) -> None:
        self._client = client
        self._index = index
        self._clock = clock
        self._consumers = consumers
        self.unindexed: dict[str, list[list[Any]]] = {}
        """Entries whose append failed, per ttl class: they go with the next ones."""

    async def add(self, expiring: dict[str, list[list[Any]]]) -> None:
        """Append finished records to the expiry index, one message per ttl class.

        The outcomes are stored already, so a failure here must not fail the settlement: the
        entries are kept and appended with the next ones (or by the next purge).
        """
        for ttl_class, entries in self.unindexed.items():
            expiring.setdefault(ttl_class, []).extend(entries)
        self.unindexed = {}
        items = []
        for ttl_class, entries in expiring.items():
            body = json.dumps(
                {INDEX_EXPIRES: max(e[2] for e in entries), INDEX_KEYS: entries}
            ).encode()
            items.append((f"{self._client.subject_prefix}.x.{ttl_class}", body, None))
        try:
            for reply in await self._client.many(items):
                ack_seq(reply)
        except BackendError as exc:
            log.warning(
                "adding %d results to the expiry index failed (%s); retrying later",
                sum(len(e) for e in expiring.values()),
                exc,
            )
            for ttl_class, entries in expiring.items():
                self.unindexed.setdefault(ttl_class, []).extend(entries)

    async def purge(self, limit: int) -> int:
        """Delete expired results, reading each ttl class of the expiry index from its oldest
        entry up to the first one still alive."""
        client = self._client
        client.connection()
        now = self._clock.now()
        if self.unindexed:
            await self.add({})
        info = await client.api(
            f"STREAM.INFO.{client.stream}", {"subjects_filter": f"{client.subject_prefix}.x.*"}
        )
        subjects = ((info or {}).get("state") or {}).get("subjects") or {}
        removed = 0
        for subject in sorted(subjects):
            ttl_class = subject.rsplit(".", 1)[-1]
            consumer = await self._consumers.get(f"x_{ttl_class}", subject)
            while removed < limit:
                msgs, _ = await self._consumers.take(
                    consumer, min(MAX_FETCH, max(limit - removed, 1))
                )
                if not msgs:
                    break
                due: list[Any] = []
                alive = False
                for msg in msgs:
                    if alive:
                        await client.publish(msg.reply, b"-NAK")
                        continue
                    try:
                        body = json.loads(msg.data)
                        exp, keys = float(body[INDEX_EXPIRES]), list(body[INDEX_KEYS])
                    except (ValueError, KeyError, TypeError):
                        await client.publish(msg.reply, b"+TERM")
                        continue
                    if exp > now:
                        alive = True
                        await client.publish(msg.reply, b"-NAK")
                    else:
                        due.append((msg, keys))
                revs = [int(entry[1]) for _, keys in due for entry in keys]
                if revs:
                    removed += await client.delete_many(revs)
                    # Their listing entries (a record requeued since has left its entry).
                    await self._index.drop_now(
                        int(entry[3]) for _, keys in due for entry in keys if len(entry) > 3
                    )
                for msg, _ in due:
                    await client.publish(msg.reply, b"+ACK")
                if alive:
                    break
        return removed
