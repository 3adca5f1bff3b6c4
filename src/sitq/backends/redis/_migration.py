"""The store format of the Redis backend, and the migration that brings a store written by an
earlier version up to it when a backend connects.

Format 1 (no format key) is the store before the listing indexes: its finished, running,
scheduled and parked tasks are in no listing set. Format 2 has them. The migration runs
``scripts/migrate.lua`` on each known queue (one queue per call, so that each call stays in its
queue's slot on a Redis Cluster) in batches of at most ``BATCH`` entries, until the queue is
done; the script keeps its progress in the queue's ``mig`` hash, so a migration cut short goes
on where it stopped. Then the format is raised (a compare-and-set that never lowers it) and the
progress hashes are deleted.

One client migrates at a time: it holds a lock (``migration_lock_key``) that it extends after
each batch, and stops if it lost it. The others wait for the format to be raised, or for the
lock to be free (its holder died: one of them takes over where it stopped). Every write of the
script is idempotent, so a batch run twice changes nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from sitq.backends.redis._keys import (
    QueueKeys,
    format_key,
    migration_lock_key,
    queues_key,
)
from sitq.backends.redis._scripts import evalsha
from sitq.backends.redis._wire import Wire, raise_errors

__all__ = ["BATCH", "FORMAT", "StoreFormat"]

# The store format this version writes.
FORMAT = 2
# The most entries one migration call looks at.
BATCH = 1000
# The migration lock's TTL (extended after each batch), in milliseconds.
_LOCK_MS = 10_000
# How often a client waiting for another's migration looks again, in seconds.
_WAIT = 0.05


class StoreFormat:
    """The format check and migration of the store under ``prefix``, through ``wire``."""

    def __init__(self, wire: Wire, prefix: str, queue_keys: Callable[[str], QueueKeys]) -> None:
        self._wire = wire
        self._format = format_key(prefix)
        self._lock = migration_lock_key(prefix)
        self._queues = queues_key(prefix)
        self._queue_keys = queue_keys
        self.current = False
        """True once this object has seen the store at ``FORMAT`` or later."""

    async def version(self) -> int:
        """The store's format version (1 if it has none)."""
        (raw,) = await self._wire.exec([("GET", self._format)])
        raise_errors([raw])
        return 1 if raw is None else int(raw)

    async def ensure(self) -> int | None:
        """Bring the store up to ``FORMAT``. Returns the number of listing entries this call's
        migration added, or ``None`` if it ran none (the store was up to date, or another
        client migrated it meanwhile)."""
        while not self.current:
            if await self.version() >= FORMAT:
                self.current = True
                return None
            token = uuid.uuid4().hex
            if await self._lock_step("lock_acquire", token, _LOCK_MS):
                try:
                    added = await self._migrate(token)
                finally:
                    await self._lock_step("lock_release", token)
                if added is not None:
                    self.current = True
                    return added
            else:
                await asyncio.sleep(_WAIT)
        return None

    async def _lock_step(self, script: str, token: str, *args: int) -> bool:
        (reply,) = await self._wire.exec([evalsha(script, [self._lock], [token, *args])])
        raise_errors([reply])
        return int(reply) == 1

    async def _migrate(self, token: str) -> int | None:
        """Migrate every known queue while holding the lock under ``token``; the number of
        entries added, or ``None`` if the lock was lost on the way."""
        (members,) = await self._wire.exec([("SMEMBERS", self._queues)])
        raise_errors([members])
        queues = sorted(bytes(m).decode() for m in members)
        added = 0
        for queue in queues:
            k = self._queue_keys(queue)
            keys = [
                k.sched,
                k.leases,
                k.seq,
                k.done_s,
                k.done_f,
                k.done_c,
                k.ck,
                k.sl,
                k.pk,
                k.run,
                k.fin_s,
                k.fin_f,
                k.fin_c,
                k.migration,
                k.migration_keys,
            ]
            done = False
            while not done:
                reply, held = await self._wire.exec(
                    [
                        evalsha("migrate", keys, [k.task, BATCH]),
                        evalsha("lock_extend", [self._lock], [token, _LOCK_MS]),
                    ]
                )
                raise_errors([reply, held])
                added += int(reply[1])
                if int(held) != 1:
                    return None
                done = int(reply[0]) == 1
        (raised,) = await self._wire.exec([evalsha("format_set", [self._format], [FORMAT])])
        raise_errors([raised])
        cleanup = [("DEL", k.migration, k.migration_keys) for k in map(self._queue_keys, queues)]
        raise_errors(await self._wire.exec(cleanup))
        return added
