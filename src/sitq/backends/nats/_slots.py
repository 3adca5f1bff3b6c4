"""The slots records of the NATS backend's concurrency keys: per (queue, concurrency key), the
list of the claims holding one of its slots (see "Concurrency keys" in ``backend``), and the
conditioned writes that extend and drop holders (a claim takes its slot in ``_claim``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sitq.backends.nats._client import CAS_TRIES, Client
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import (
    CONCURRENCY_KEY,
    HOLDERS,
    QUEUE,
    Entry,
    encode,
    task_key,
)
from sitq.errors import BackendError

log = logging.getLogger("sitq.nats")


def slot_key(rec: dict[str, Any]) -> str:
    """The bucket key of the slots of a keyed task's (queue, concurrency key)."""
    return f"_.ck.{rec[QUEUE]}.{task_key(str(rec[CONCURRENCY_KEY]))}"


class Holder(NamedTuple):
    """One claim holding a slot; written as the JSON array ``[task, fence, until, owner]``."""

    task: str
    """The task's bucket key."""
    fence: int
    """The claim's fencing token."""
    until: float
    """When the claim's lease ends (server clock)."""
    owner: str
    """The backend object that took the slot."""


@dataclass(slots=True)
class KeySlots:
    """The running tasks of one (queue, concurrency key) as read at revision ``rev`` (0: no
    record yet)."""

    rev: int
    holders: list[Holder]

    @classmethod
    def read(cls, entry: Entry | None) -> KeySlots:
        """The slots a record holds (none for a missing or deleted record)."""
        if entry is None or entry.head is None:
            return cls(entry.rev if entry else 0, [])
        holders = entry.head.get(HOLDERS)
        if not isinstance(holders, list):
            return cls(entry.rev, [])
        return cls(entry.rev, [Holder(*h) for h in holders if isinstance(h, list) and len(h) == 4])

    def busy(self, now: float, but: str) -> set[str]:
        """The tasks (other than ``but``) holding a slot under an unexpired lease."""
        return {h.task for h in self.holders if h.until > now and h.task != but}

    def admit(
        self, task: str, fence: int, until: float, owner: str, limit: int, now: float
    ) -> bool:
        """Take a slot for ``task`` if fewer than ``limit`` other tasks hold one; expired
        holders and the task's own older claims are dropped."""
        if len(self.busy(now, task)) >= limit:
            return False
        self.holders = [
            h for h in self.holders if h.until > now and not (h.task == task and h.fence < fence)
        ]
        self.holders.append(Holder(task, fence, until, owner))
        return True

    def drop(self, gone: set[tuple[str, int]], owner: str | None = None) -> bool:
        """Remove, per (task, fencing token) in ``gone``, the claims of the task up to that
        token, or with ``owner`` only that owner's holder with exactly that token; whether
        any went."""
        before = len(self.holders)
        if owner is not None:
            self.holders = [
                h for h in self.holders if h.owner != owner or (h.task, h.fence) not in gone
            ]
        else:
            self.holders = [
                h for h in self.holders if not any(h.task == t and h.fence <= f for t, f in gone)
            ]
        return len(self.holders) < before

    def extend(self, task: str, fence: int, until: float, now: float) -> bool:
        """Extend the slot held by the claim (``task``, ``fence``) to ``until``; whether it
        still held one under an unexpired lease."""
        held = False
        for i, h in enumerate(self.holders):
            if h.task == task and h.fence == fence and h.until > now:
                held = True
                self.holders[i] = h._replace(until=max(h.until, until))
        return held

    def next_free(self, now: float) -> float:
        """Seconds until the first unexpired holder's lease runs out (``inf`` if none)."""
        return min((h.until for h in self.holders if h.until > now), default=math.inf) - now

    def encode(self) -> bytes:
        """The record to write."""
        return encode({HOLDERS: self.holders})


async def drop_slots(
    client: Client, drops: dict[str, set[tuple[str, int]]], *, owner: str | None
) -> None:
    """Remove holders from slot records: per (task key, fencing token), the claims of the
    task up to that token (with ``owner``: only that owner's holder with exactly that token)."""
    todo = {k: v for k, v in drops.items() if v}
    for _ in range(CAS_TRIES):
        if not todo:
            return
        keys = list(todo)
        writes: list[tuple[str, KeySlots]] = []
        for key, entry in zip(keys, await client.read_meta(keys), strict=True):
            slots = KeySlots.read(entry)
            if slots.drop(todo[key], owner):
                writes.append((key, slots))
        if not writes:
            return
        acks = await client.many(client.write(k, s.encode(), s.rev) for k, s in writes)
        todo = {k: todo[k] for (k, _), ack in zip(writes, acks, strict=True) if not ack_seq(ack)}
    raise BackendError("could not free concurrency slots: their records kept changing")


async def free_slots(
    client: Client, drops: dict[str, set[tuple[str, int]]], *, owner: str | None = None
) -> None:
    """``drop_slots`` after the outcomes are stored: a failure here only delays the slot
    until its holder's lease runs out, so it is logged, not raised."""
    try:
        await drop_slots(client, drops, owner=owner)
    except BackendError as exc:
        log.warning("freeing concurrency slots failed (%s); they free at lease end", exc)


async def extend_slots(
    client: Client, items: Sequence[tuple[str, str, int]], until: float, now: float
) -> list[bool]:
    """Extend the slots held by claims (slot record key, task key, fencing token) to
    ``until``; per claim, whether its slot was still held under an unexpired lease."""
    held = [False] * len(items)
    groups: dict[str, list[int]] = {}
    for i, (key, _, _) in enumerate(items):
        groups.setdefault(key, []).append(i)
    for _ in range(CAS_TRIES):
        keys = list(groups)
        writes: list[tuple[str, KeySlots]] = []
        for key, entry in zip(keys, await client.read_meta(keys), strict=True):
            slots = KeySlots.read(entry)
            for i in groups[key]:
                _, task, fence = items[i]
                held[i] = slots.extend(task, fence, until, now)
            if any(held[i] for i in groups[key]):
                writes.append((key, slots))
        if not writes:
            return held
        acks = await client.many(client.write(k, s.encode(), s.rev) for k, s in writes)
        groups = {
            k: groups[k] for (k, _), ack in zip(writes, acks, strict=True) if not ack_seq(ack)
        }
        if not groups:
            return held
    raise BackendError("could not extend concurrency slots: their records kept changing")
