"""Claims on the NATS backend: fetch from the queues' consumers highest priority first, read
each task's record (unless the message carries its revision), decide whether it is due, take
the slot of its concurrency key, and claim it by a write conditioned on the revision read.
What this backend handed out is kept in ``Holdings`` for the lease steps and settlements."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sitq.backends.nats._client import CAS_TRIES, Client
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._consumers import MAX_FETCH, PRIORITY_REFRESH, Consumers
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_info, ack_seq
from sitq.backends.nats._records import (
    CONCURRENCY_KEY,
    CONCURRENCY_LIMIT,
    ETA,
    FENCE,
    FINAL,
    GENERATION,
    LEASE_UNTIL,
    LIST_SEQ,
    LIST_TOKEN,
    OPTIONS,
    QUEUE,
    REVISION,
    STATE,
    TASK_ID,
    checked,
    claim_of,
    decode,
    encode,
    expired,
    keyed,
    message_record,
    running,
    task_key,
)
from sitq.backends.nats._slots import KeySlots, free_slots, slot_key
from sitq.models import Claim, TaskStatus

log = logging.getLogger("sitq.nats")

ORPHAN_GRACE: Final = 30.0
"""Seconds a message may wait for its record (enqueue writes both at once) before it is dropped."""
_BLOCKED_MAX: Final = 1.0
"""Longest back-off (seconds) before a task whose concurrency key is full is looked at again."""


@dataclass(slots=True)
class Held:
    """A claim this backend handed out: the message to ack or nak, the record as written, the
    sequence of its listing entry, and the payload and options (kept by a failure)."""

    reply: str | None
    rev: int
    rec: dict[str, Any]
    entry: int = 0
    kept: tuple[bytes, str] | None = None


class Holdings:
    """The claims this backend handed out, by (task id, fencing token): one per task."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, int], Held] = {}
        self._fence: dict[str, int] = {}

    def get(self, key: tuple[str, int]) -> Held | None:
        """The claim (task id, fencing token), if this backend holds it."""
        return self._held.get(key)

    def hand_out(
        self,
        reply: str | None,
        rec: dict[str, Any],
        rev: int,
        entry: int,
        kept: tuple[bytes, str] | None,
    ) -> None:
        """Hold a new claim of the record's task (any older one of the task is forgotten)."""
        task_id, fence = rec[TASK_ID], rec[FENCE]
        previous = self._fence.pop(task_id, None)
        if previous is not None:
            self._held.pop((task_id, previous), None)
        self._held[(task_id, fence)] = Held(reply, rev, rec, entry, kept)
        self._fence[task_id] = fence

    def forget(self, key: tuple[str, int]) -> Held | None:
        """Stop holding the claim (task id, fencing token); what was held, if anything."""
        held = self._held.pop(key, None)
        if self._fence.get(key[0]) == key[1]:
            del self._fence[key[0]]
        return held

    def clear(self) -> None:
        """Forget every claim (the connection is closed)."""
        self._held.clear()
        self._fence.clear()


@dataclass(slots=True)
class _Delivery:
    """A fetched message, parsed."""

    msg: Any
    head: dict[str, Any]
    payload: bytes
    key: str
    delivered: int
    stamp: float
    rec: dict[str, Any] | None = None
    rev: int = 0
    known: bool = False
    tries: int = 0
    problem: str | None = None
    """What was wrong with the record (repaired to be claimed and failed by the worker)."""


class Claimer:
    """The claim step of one backend."""

    def __init__(
        self,
        client: Client,
        clock: ServerClock,
        consumers: Consumers,
        holdings: Holdings,
        index: Index,
        *,
        owner: str,
        ack_wait: float,
    ) -> None:
        self._client = client
        self._index = index
        self._clock = clock
        self._consumers = consumers
        self._holdings = holdings
        self._owner = owner
        self._ack_wait = ack_wait

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Fetch from the queues' consumers highest priority first; claim each due task by a
        conditioned write of its record."""
        if limit <= 0:
            return []
        consumers = await self._consumers.for_queues(queues, refresh_after=PRIORITY_REFRESH)
        claims: list[Claim] = []
        for _, _, consumer in consumers:
            batch = limit - len(claims)
            while len(claims) < limit:
                need = limit - len(claims)
                msgs, more = await self._consumers.take(consumer, min(max(need, batch), MAX_FETCH))
                if msgs:
                    before = len(claims)
                    claims += await self._claim_messages(msgs, need, worker_id, lease)
                    if len(claims) - before < len(msgs):
                        batch = min(batch * 2, MAX_FETCH)  # skipped some: read further at once
                if more is None:
                    # A long poll (or a freed concurrency slot) brought these in: claim them
                    # now rather than fetch first, and stop here if they all went (this
                    # consumer may have more; the next round fetches). Otherwise fetch what
                    # stands behind the ones that could not go.
                    if len(claims) - before >= len(msgs):
                        return claims
                    continue
                if not more:
                    break
            if len(claims) >= limit:
                break
        return claims

    def _parse(self, msg: Any) -> _Delivery | None:
        try:
            head, payload = decode(msg.data)
            key = task_key(str(head[TASK_ID]))
        except (ValueError, KeyError, TypeError):
            log.error("dropping a message on %s that is not a sitq task", msg.subject)
            return None
        delivered, stamp = ack_info(msg.reply)
        return _Delivery(msg, head, payload, key, delivered, stamp)

    async def _claim_messages(
        self, msgs: list[Any], need: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Claim what is due among fetched messages (at most ``need``); ack or nak the rest."""
        claims: list[Claim] = []
        try:
            return await self._claim_round(msgs, need, worker_id, lease, claims)
        except BaseException:
            # Give back what was not handed out rather than leave it for the ack wait (a nak
            # of a message already acked or timed is harmless: its record decides again).
            handed = {c.task_id for c in claims}
            for msg in msgs:
                d = self._parse(msg)
                if d is None or str(d.head.get(TASK_ID)) not in handed:
                    await self._client.publish(msg.reply, b"-NAK")
            raise

    async def _claim_round(
        self, msgs: list[Any], need: int, worker_id: str, lease: float, claims: list[Claim]
    ) -> list[Claim]:
        client = self._client
        deliveries: list[_Delivery] = []
        admitted: dict[str, set[tuple[str, int]]] = {}  # slots taken: record key -> claims
        for msg in msgs:
            d = self._parse(msg)
            if d is None:
                await client.publish(msg.reply, b"+TERM")
            else:
                deliveries.append(d)
        todo = deliveries
        for _ in range(4):
            if not todo:
                break
            now = self._clock.now()
            # A first delivery of a message that carries its record's revision needs no read:
            # the record is still the one enqueue wrote unless something changed it, and then
            # the conditioned write fails and we read it.
            unknown = [
                d
                for d in todo
                if not d.known
                and not (d.delivered == 1 and type(d.head.get(REVISION)) is int and d.tries == 0)
            ]
            if unknown:
                for d, got in zip(
                    unknown, await client.get_many([d.key for d in unknown]), strict=True
                ):
                    d.known = True
                    d.rec, d.rev = (got[0], got[2]) if got is not None else (None, 0)
            due: list[_Delivery] = []
            for d in todo:
                if not d.known:
                    d.rec, d.rev = message_record(d.head), int(d.head[REVISION])
                if d.rec is not None:
                    d.rec, d.problem = checked(d.rec, d.head, now)
                    if d.rec is None:
                        log.error("task record %s cannot be read (%s); skipped", d.key, d.problem)
                        await client.publish(d.msg.reply, b"+TERM")
                        continue
                if await self._decide(d, now):
                    due.append(d)
            chosen = await self._choose(due, need - len(claims), now, lease, admitted)
            writes = [(d, self._running(d, now, worker_id, lease)) for d in chosen]
            if not writes:
                todo = []  # each went back already, with its own delay
                break
            if abs(lease - self._ack_wait) > 0.5:
                # The lease's timer: JetStream redelivers the message when the lease ends. It
                # goes out in the same flush as (and before) the claim itself, so a worker that
                # stops right after claiming still loses the task after its lease. (When the two
                # are equal the ack wait, counted from the delivery, already does this.) A claim
                # that then fails sets the message's timer again below.
                for d, _ in writes:
                    await client.nak(d.msg.reply, lease)
            # Each claim writes its running task's listing entry in the same flush; the entry
            # of the state it leaves goes once the claim is stored, the new one if it is not.
            replies = await client.many(
                [client.write(d.key, encode(rec), d.rev) for d, rec in writes]
                + [
                    self._index.entry(
                        self._index.state_subject(TaskStatus.RUNNING, str(rec[QUEUE])),
                        d.key,
                        str(rec[LIST_TOKEN]),
                    )
                    for d, rec in writes
                ]
            )
            acks, entries = replies[: len(writes)], replies[len(writes) :]
            todo = []
            dropped = []
            for (d, rec), ack, entry_ack in zip(writes, acks, entries, strict=True):
                rev = ack_seq(ack)
                entry = ack_seq(entry_ack)
                if not rev:
                    dropped.append(entry)
                    d.known = False
                    d.tries += 1
                    todo.append(d)
                    continue
                assert d.rec is not None
                dropped.append(int(d.rec.get(LIST_SEQ) or 0))
                claims.append(self._hand_out(d, rec, rev, entry))
            self._index.drop(dropped)
        for d in todo:  # lost every race for it: let it come back
            await client.publish(d.msg.reply, b"-NAK")
        if admitted:
            # Slots taken for tasks that another worker claimed first go back at once.
            claimed = {(task_key(c.task_id), c.fencing_token) for c in claims}
            await free_slots(
                client, {k: v - claimed for k, v in admitted.items()}, owner=self._owner
            )
        return claims

    async def _choose(
        self,
        due: list[_Delivery],
        room: int,
        now: float,
        lease: float,
        admitted: dict[str, set[tuple[str, int]]],
    ) -> list[_Delivery]:
        """The due deliveries to claim, in order: at most ``room``, and a task with a
        concurrency key only if it got a slot (taken here, before its claim is written). The
        others go back: those beyond ``room`` at once, those whose key is full after a delay."""
        if not any(keyed(d.rec) for d in due):
            for d in due[room:]:
                await self._client.publish(d.msg.reply, b"-NAK")
            return due[:room]
        keys = list(dict.fromkeys(slot_key(d.rec) for d in due if d.rec and keyed(d.rec)))
        slots = {
            k: KeySlots.read(e)
            for k, e in zip(keys, await self._client.read_meta(keys), strict=True)
        }
        chosen: list[_Delivery] = []
        groups: dict[str, list[_Delivery]] = {}
        for d in due:
            assert d.rec is not None
            if len(chosen) >= room:
                await self._client.publish(d.msg.reply, b"-NAK")
                continue
            if keyed(d.rec):
                key = slot_key(d.rec)
                if not self._admit(slots[key], d, now, lease):
                    await self._block(d, slots[key], now)
                    continue
                groups.setdefault(key, []).append(d)
            chosen.append(d)
        if not groups:
            return chosen
        kept = await self._take_slots(groups, slots, now, lease)
        for key, ds in kept.items():
            admitted.setdefault(key, set()).update((d.key, d.rev) for d in ds)
        taken = {id(d) for ds in kept.values() for d in ds}
        return [d for d in chosen if not keyed(d.rec) or id(d) in taken]

    def _admit(self, slots: KeySlots, d: _Delivery, now: float, lease: float) -> bool:
        assert d.rec is not None
        return slots.admit(
            d.key, d.rev, now + lease, self._owner, int(d.rec[CONCURRENCY_LIMIT]), now
        )

    async def _take_slots(
        self,
        groups: dict[str, list[_Delivery]],
        slots: dict[str, KeySlots],
        now: float,
        lease: float,
    ) -> dict[str, list[_Delivery]]:
        """Write the slot records with the holders admitted (each conditioned on the revision
        read); where another worker wrote first, read again and admit what still fits."""
        client = self._client
        kept: dict[str, list[_Delivery]] = {}
        for _ in range(CAS_TRIES):
            keys = list(groups)
            acks = await client.many(client.write(k, slots[k].encode(), slots[k].rev) for k in keys)
            failed = []
            for key, ack in zip(keys, acks, strict=True):
                rev = ack_seq(ack)
                if rev:
                    slots[key].rev = rev
                    kept[key] = groups[key]
                else:
                    failed.append(key)
            if not failed:
                return kept
            fresh = await client.read_meta(failed)
            retry: dict[str, list[_Delivery]] = {}
            for key, entry in zip(failed, fresh, strict=True):
                slots[key] = KeySlots.read(entry)
                for d in groups[key]:
                    if self._admit(slots[key], d, now, lease):
                        retry.setdefault(key, []).append(d)
                    else:
                        await self._block(d, slots[key], now)
            groups = retry
            if not groups:
                return kept
        for ds in groups.values():  # no luck against the other writers: try later
            for d in ds:
                await self._block(d, None, now)
        return kept

    async def _block(self, d: _Delivery, slots: KeySlots | None, now: float) -> None:
        """Put back a task whose concurrency key is full: naked with a growing delay (never
        past the moment the first holder's lease ends), and parked here so that a slot freed
        before then brings it back at once."""
        assert d.rec is not None
        delay = min(0.05 * 2 ** min(max(d.delivered - 1, 0), 8), _BLOCKED_MAX)
        if slots is not None:
            delay = min(delay, slots.next_free(now) + 0.005)
        delay = max(delay, 0.005)
        await self._client.nak(d.msg.reply, delay)
        self._consumers.park(d.msg, str(d.rec[QUEUE]), str(d.rec[CONCURRENCY_KEY]), delay)

    async def _decide(self, d: _Delivery, now: float) -> bool:
        """True if the delivery's task is due to be claimed; otherwise ack or nak it."""
        client = self._client
        rec, reply = d.rec, d.msg.reply
        young = not d.stamp or now - d.stamp < ORPHAN_GRACE
        if rec is None or (
            young
            and rec.get(GENERATION) != d.head.get(GENERATION)
            and rec[STATE] in FINAL
            and expired(rec, now)
        ):
            if young:
                # Enqueue writes record and message at once, and an explicit id whose result
                # expired is published before its new record replaces the old one: the
                # record of this message's life may not be there yet.
                delay = min(0.05 * 2 ** max(d.delivered - 1, 0), 2.0)
                await client.nak(reply, delay)
            else:
                await client.publish(reply, b"+ACK")  # its record expired or was never stored
            return False
        if rec.get(GENERATION) != d.head.get(GENERATION) or rec[STATE] in FINAL:
            await client.publish(reply, b"+ACK")  # an older life of the id, or finished
            return False
        if rec[STATE] == "pending":
            if rec[ETA] > now:
                await client.nak(reply, rec[ETA] - now)
                return False
            return True
        lease_until = rec.get(LEASE_UNTIL, 0)
        if lease_until > now:
            await client.nak(reply, lease_until - now)
            return False
        return True  # running, and its lease ran out: its worker was lost

    def _running(self, d: _Delivery, now: float, worker_id: str, lease: float) -> dict[str, Any]:
        assert d.rec is not None
        return running(d.rec, d.rev, now, worker_id, lease)

    def _hand_out(self, d: _Delivery, rec: dict[str, Any], rev: int, entry: int) -> Claim:
        options = str(d.head.get(OPTIONS, ""))
        self._holdings.hand_out(d.msg.reply, rec, rev, entry, (d.payload, options))
        return claim_of(rec, d.payload, options, d.problem)
