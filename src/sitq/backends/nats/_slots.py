"""The slots records of the NATS backend's concurrency keys: per (queue, concurrency key), the
list of the claims holding one of its slots (see "Concurrency keys" in ``backend``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

from sitq.backends.nats._records import (
    CONCURRENCY_KEY,
    HOLDERS,
    QUEUE,
    Entry,
    encode,
    task_key,
)


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
