"""Locks on the NATS backend: ``_.lock.<name>`` per held lock, holding its token and TTL. The
TTL counts from the server's timestamp of the write that took or last extended the lock, judged
against this client's estimate of the server's clock (the one leases use), so the holder's own
clock never matters. Every change is a write conditioned on the revision read."""

from __future__ import annotations

import math

from sitq.backends.nats._client import CAS_TRIES, Client
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import LOCK_TOKEN, LOCK_TTL, NAME, Entry, encode, lock_key


def _held(entry: Entry | None, now: float) -> bool:
    """Whether a lock record is held: its TTL counts from the server's timestamp of the
    write that took or last extended it."""
    if entry is None or entry.head is None:
        return False
    try:
        return entry.stamp + float(entry.head[LOCK_TTL]) > now
    except (KeyError, TypeError, ValueError):
        return False


async def acquire_lock(
    client: Client, clock: ServerClock, name: str, token: str, ttl: float
) -> bool:
    """Create the lock's record, or replace one whose TTL ran out, by a write conditioned
    on the revision read; of racing clients exactly one write succeeds."""
    key = lock_key(name)
    data = encode({NAME: name, LOCK_TOKEN: token, LOCK_TTL: ttl})
    for _ in range(CAS_TRIES):
        (entry,) = await client.read_meta([key])
        if _held(entry, clock.now()):
            return False
        if ack_seq(await client.one(*client.write(key, data, entry.rev if entry else 0))):
            return True
    return False


async def acquire_any_lock(
    client: Client, clock: ServerClock, names: list[str], token: str, ttl: float
) -> tuple[str | None, float]:
    """Read every lock's record in one batch, then take the first one not held by a write
    conditioned on the revision read, as ``acquire_lock`` does (a lock another client took
    meanwhile is passed over for the next free one); ``(None, wait)`` when all are held,
    ``wait`` by the server's clock."""
    keys = [lock_key(name) for name in names]
    for _ in range(CAS_TRIES):
        entries = await client.read_meta(keys)
        now = clock.now()
        first = math.inf
        free: list[tuple[str, str, Entry | None]] = []
        for name, key, entry in zip(names, keys, entries, strict=True):
            if _held(entry, now):
                assert entry is not None
                assert entry.head is not None
                first = min(first, entry.stamp + float(entry.head[LOCK_TTL]))
            else:
                free.append((name, key, entry))
        if not free:
            return None, max(first - now, 0.0)
        for name, key, entry in free:
            data = encode({NAME: name, LOCK_TOKEN: token, LOCK_TTL: ttl})
            if ack_seq(await client.one(*client.write(key, data, entry.rev if entry else 0))):
                return name, 0.0
    return None, 0.0


async def extend_lock(
    client: Client, clock: ServerClock, name: str, token: str, ttl: float
) -> bool:
    """Rewrite the record (restarting its TTL) if ``token`` holds the lock."""
    key = lock_key(name)
    data = encode({NAME: name, LOCK_TOKEN: token, LOCK_TTL: ttl})
    for _ in range(CAS_TRIES):
        (entry,) = await client.read_meta([key])
        if (
            entry is None
            or entry.head is None
            or entry.head.get(LOCK_TOKEN) != token
            or not _held(entry, clock.now())
        ):
            return False
        if ack_seq(await client.one(*client.write(key, data, entry.rev))):
            return True
    return False


async def release_lock(client: Client, clock: ServerClock, name: str, token: str) -> bool:
    """Delete the record by its revision if ``token`` holds the lock (a record of this
    token whose TTL ran out is deleted too, but reported as not held)."""
    key = lock_key(name)
    for _ in range(CAS_TRIES):
        (entry,) = await client.read_meta([key])
        if entry is None or entry.head is None or entry.head.get(LOCK_TOKEN) != token:
            return False
        held = _held(entry, clock.now())
        if await client.delete_rev(entry.rev):
            return held
    return False
