"""The NATS backend's pull consumers: one durable consumer per (queue, priority) in use, the
priorities a queue has (learnt from the stream, announced by enqueuers), the messages fetched
or brought in by a long poll until a claim takes them, and the parked messages of tasks whose
concurrency key was full, which a freed slot brings back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any, Final

from sitq.backends.nats._client import Client
from sitq.backends.nats._jetstream import ERR_CONSUMER_NOT_FOUND, NS, Consumer, stream_seq
from sitq.errors import BackendError

PRIORITY_REFRESH: Final = 10.0
"""Seconds after which a claim reads a queue's priorities from the stream again."""
MAX_FETCH: Final = 256
"""Most messages one fetch asks for."""
_RETURN_AFTER: Final = 0.25
"""Seconds a message a long poll brought in may wait for a claim before it goes back."""
_MAX_PARKED: Final = 1000


def consumer_name(queue: str, priority: int) -> str:
    """The durable consumer of a queue's priority."""
    sign = "m" if priority < 0 else "p"
    return f"q_{queue}_{sign}{abs(priority)}"


class Consumers:
    """The consumers this backend created, and what they brought in.

    ``work`` is set whenever a claim may find something new: a message from a long poll, a
    new priority, a parked message brought back, the connection lost or regained.
    """

    def __init__(self, client: Client, ack_wait: float) -> None:
        self._client = client
        self._ack_wait = ack_wait
        self.work = asyncio.Event()
        self.by_name: dict[str, Consumer] = {}
        self.priorities: dict[str, set[int]] = {}
        """The priorities known to be in use, per queue."""
        self._refreshed: dict[str, float] = {}
        self.stale = False
        """Whether every queue's priorities must be read again (after a reconnection)."""
        self._announced: dict[tuple[str, int], float] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Messages of tasks whose concurrency key was full, by (queue, key) then stream
        # sequence: (message, monotonic time its nak delay ends). A freed slot brings them back.
        self.parked: dict[tuple[str, str], dict[int, tuple[Any, float]]] = {}

    async def get(self, name: str, subject: str) -> Consumer:
        """The durable consumer ``name`` on ``subject``, created (on the server too) if new."""
        consumer = self.by_name.get(name)
        if consumer is not None:
            return consumer
        client = self._client
        config = {
            "durable_name": name,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(self._ack_wait * NS),
            "max_deliver": -1,
            "filter_subject": subject,
            "replay_policy": "instant",
            "max_ack_pending": -1,
        }
        body = {"stream_name": client.stream, "config": config}
        try:
            await client.api(f"CONSUMER.DURABLE.CREATE.{client.stream}.{name}", body)
        except BackendError as exc:
            # Created meanwhile with other settings (another sitq version): use it as it is.
            if (
                await client.api(
                    f"CONSUMER.INFO.{client.stream}.{name}", None, ok=(ERR_CONSUMER_NOT_FOUND,)
                )
                is None
            ):
                raise exc
        consumer = self.by_name.get(name)
        if consumer is not None:  # created concurrently by another call
            return consumer
        nc = client.connection()
        consumer = Consumer(name, subject, f"$JS.API.CONSUMER.MSG.NEXT.{client.stream}.{name}")
        consumer.fetch_inbox = nc.new_inbox()
        consumer.poll_inbox = nc.new_inbox()

        async def on_fetch(msg: Any) -> None:
            self._on_delivery(consumer, msg, poll=False)

        async def on_poll(msg: Any) -> None:
            self._on_delivery(consumer, msg, poll=True)

        consumer.subs = [
            await nc.subscribe(consumer.fetch_inbox, cb=on_fetch),
            await nc.subscribe(consumer.poll_inbox, cb=on_poll),
        ]
        self.by_name[name] = consumer
        return consumer

    def _on_delivery(self, consumer: Consumer, msg: Any, *, poll: bool) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if poll:
            consumer.poll_until = 0.0
        if status:
            if status == "100":  # idle heartbeat
                return
            if not poll:
                waiter = consumer.fetch_waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            return
        if poll:
            self._buffer(consumer, msg)
            self.work.set()
        else:
            self._buffer(consumer, msg)
            consumer.fetch_got += 1
            waiter = consumer.fetch_waiter
            if (
                waiter is not None
                and not waiter.done()
                and consumer.fetch_got >= consumer.fetch_need
            ):
                waiter.set_result(None)

    def _buffer(self, consumer: Consumer, msg: Any) -> None:
        """Keep a message for the next claim; it goes back if no claim takes it soon."""
        consumer.buffer.append((msg, time.monotonic()))
        if not consumer.return_scheduled:
            consumer.return_scheduled = True
            asyncio.get_running_loop().call_later(_RETURN_AFTER * 1.5, self._return_stale, consumer)

    def _return_stale(self, consumer: Consumer) -> None:
        """Give back messages a long poll brought in that no claim took: another worker may
        be free while this one is busy."""
        consumer.return_scheduled = False
        limit = time.monotonic() - _RETURN_AFTER
        stale = []
        while consumer.fetch_waiter is None and consumer.buffer and consumer.buffer[0][1] <= limit:
            stale.append(consumer.buffer.popleft()[0])
        for msg in stale:
            self._spawn(self._client.publish(msg.reply, b"-NAK"))
        if consumer.buffer:
            consumer.return_scheduled = True
            asyncio.get_running_loop().call_later(_RETURN_AFTER, self._return_stale, consumer)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def on_notification(self, msg: Any) -> None:
        """A message on ``sitq.<stream>.n.>``: ``n.p.<queue>``, a priority is in use on a
        queue; ``n.k.<queue>``, slots of the concurrency key in the payload were freed."""
        tokens = msg.subject.split(".")
        queue = tokens[-1]
        if len(tokens) >= 2 and tokens[-2] == "k":
            with contextlib.suppress(UnicodeDecodeError, ValueError):
                count, _, ck = bytes(msg.data).decode().partition(" ")
                self.unpark(queue, ck, int(count))
            return
        try:
            priority = int(msg.data)
        except ValueError:
            return
        known = self.priorities.get(queue)
        if known is not None and priority not in known:
            known.add(priority)
            self.work.set()

    async def for_queues(
        self, queues: Sequence[str], *, refresh_after: float
    ) -> list[tuple[int, int, Consumer]]:
        """The consumers of ``queues`` as (priority, queue index, consumer), best first."""
        now = time.monotonic()
        stale = [
            q
            for q in queues
            if self.stale or now - self._refreshed.get(q, -math.inf) > refresh_after
        ]
        if stale:
            await self._refresh_priorities(stale)
        out = []
        for index, queue in enumerate(queues):
            for priority in self.priorities.get(queue, ()):
                name = consumer_name(queue, priority)
                subject = f"{self._client.subject_prefix}.q.{queue}.{priority}"
                out.append((priority, index, await self.get(name, subject)))
        out.sort(key=lambda item: (-item[0], item[1]))
        return out

    async def _refresh_priorities(self, queues: Sequence[str]) -> None:
        """Learn which priorities have messages, from the stream's subject counts."""
        self.stale = False
        client = self._client
        info = await client.api(
            f"STREAM.INFO.{client.stream}", {"subjects_filter": f"{client.subject_prefix}.q.>"}
        )
        subjects = ((info or {}).get("state") or {}).get("subjects") or {}
        found: dict[str, set[int]] = {}
        for subject in subjects:
            parts = subject.rsplit(".", 2)
            with contextlib.suppress(ValueError, IndexError):
                found.setdefault(parts[1], set()).add(int(parts[2]))
        now = time.monotonic()
        for queue in queues:
            known = self.priorities.setdefault(queue, {0})
            known |= found.get(queue, set())
            self._refreshed[queue] = now

    async def announce(self, pairs: Iterable[tuple[str, int]]) -> None:
        """Tell workers (at most once a second per queue and priority) that a priority is in
        use."""
        now = time.monotonic()
        for queue, priority in pairs:
            self.priorities.setdefault(queue, {0}).add(priority)
            if now - self._announced.get((queue, priority), -math.inf) >= 1.0:
                self._announced[(queue, priority)] = now
                await self._client.publish(
                    f"{self._client.subject_prefix}.n.p.{queue}", str(priority).encode()
                )

    async def take(self, consumer: Consumer, want: int) -> tuple[list[Any], bool | None]:
        """Up to ``want`` messages, and whether the consumer may have more to deliver now
        (``None``: taken from what a long poll brought in, nothing was fetched).

        Nothing is fetched while a long poll is out on the consumer: it would have been
        answered if the consumer had a message to deliver.
        """
        async with consumer.lock:
            out = [consumer.buffer.popleft()[0] for _ in range(min(want, len(consumer.buffer)))]
            if out:
                return out, None
            if consumer.poll_until > time.monotonic():
                return out, False
            nc = self._client.connection()
            timeout = self._client.request_timeout
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            consumer.fetch_waiter = waiter
            consumer.fetch_need = want
            consumer.fetch_got = 0
            try:
                await nc.publish(
                    consumer.next_subject,
                    json.dumps({"batch": want, "no_wait": True}).encode(),
                    reply=consumer.fetch_inbox,
                )
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                raise BackendError(
                    f"NATS: no answer to a fetch from consumer {consumer.name} within {timeout:g} s"
                ) from None
            except BackendError:
                raise
            except Exception as exc:
                raise BackendError(f"NATS: {type(exc).__name__}: {exc}") from exc
            finally:
                consumer.fetch_waiter = None
            while consumer.buffer and len(out) < want:
                out.append(consumer.buffer.popleft()[0])
            return out, len(out) >= want

    async def long_poll(self, consumers: Iterable[Consumer], expires: float) -> None:
        """Hold one long-polling pull request (``expires`` seconds) on each consumer that has
        none out: the message it brings sets ``work``."""
        nc = self._client.connection()
        now = time.monotonic()
        for consumer in consumers:
            if consumer.poll_until > now:
                continue  # the last long poll is still out there
            consumer.poll_until = now + expires
            body = json.dumps({"batch": 1, "expires": int(expires * NS)}).encode()
            try:
                await nc.publish(consumer.next_subject, body, reply=consumer.poll_inbox)
            except Exception as exc:
                consumer.poll_until = 0.0
                raise BackendError(f"NATS: {type(exc).__name__}: {exc}") from exc

    def park(self, msg: Any, queue: str, ck: str, delay: float) -> None:
        """Remember a message whose concurrency key was full (it was naked with ``delay``), so
        that a slot freed before then brings it back at once."""
        seq = stream_seq(msg.reply)
        if not seq:
            return
        parked = self.parked.setdefault((queue, ck), {})
        parked.pop(seq, None)
        parked[seq] = (msg, time.monotonic() + delay)
        if len(parked) > 64:
            now = time.monotonic()
            for stale in [k for k, (_, until) in parked.items() if until <= now]:
                del parked[stale]
            while len(parked) > _MAX_PARKED:
                del parked[next(iter(parked))]  # the oldest; its own timer brings it back
        if len(self.parked) > _MAX_PARKED:
            now = time.monotonic()
            for slot in [k for k, v in self.parked.items() if all(u <= now for _, u in v.values())]:
                del self.parked[slot]

    def unpark(self, queue: str, ck: str, count: int) -> None:
        """``count`` slots of (queue, ck) were freed: hand as many parked messages of that key
        (highest priority, then oldest first) to the next claim, and wake the waiters. A message
        no claim takes soon goes back to the stream."""
        parked = self.parked.get((queue, ck))
        if not parked:
            return
        now = time.monotonic()
        ready: list[tuple[int, int, Any, Consumer]] = []
        for seq, (msg, until) in list(parked.items()):
            if until <= now:
                del parked[seq]  # its timer gave it back already
                continue
            with contextlib.suppress(ValueError):
                priority = int(msg.subject.rsplit(".", 1)[-1])
                consumer = self.by_name.get(consumer_name(queue, priority))
                if consumer is not None:
                    ready.append((-priority, seq, msg, consumer))
        ready.sort(key=lambda item: item[:2])
        for _, seq, msg, consumer in ready[: max(count, 1)]:
            del parked[seq]
            self._buffer(consumer, msg)
        if not parked:
            del self.parked[(queue, ck)]
        if ready:
            self.work.set()

    def connection_lost(self) -> None:
        """No long poll survives a lost connection, and no fetch gets its answer: end them."""
        for consumer in self.by_name.values():
            consumer.poll_until = 0.0
            waiter = consumer.fetch_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.work.set()

    def forget(self) -> None:
        """Forget every consumer, message and task of an event loop that has ended (no I/O:
        that loop cannot run any)."""
        self.by_name.clear()
        self.priorities.clear()
        self._refreshed.clear()
        self.parked.clear()
        self._background = set()
        self.work = asyncio.Event()

    async def close(self, nc: Any) -> None:
        """Give back every message no claim took, end the fetches and forget the consumers."""
        for consumer in self.by_name.values():
            while consumer.buffer:
                msg, _ = consumer.buffer.popleft()
                with contextlib.suppress(Exception):
                    await nc.publish(msg.reply, b"-NAK")
            waiter = consumer.fetch_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self.by_name.clear()
        self.priorities.clear()
        self._refreshed.clear()
        self.parked.clear()
