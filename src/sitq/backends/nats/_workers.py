"""Worker records on the NATS backend: one entry per heartbeat on ``sitq.<stream>.l.workers``
in the listing index's stream, ``{"id": worker id, "exp": expires_at}`` then the engine's data.

NATS 2.9 has no per-message TTL, so the expiry travels in the entry and readers leave out (and
delete) the expired ones. A heartbeat writes the new entry and deletes the one this backend
wrote before for the same worker; a worker that died leaves its last entry, which the next
listing past its expiry deletes. The subject holds about one entry per live worker, so a
listing reads only those.
"""

from __future__ import annotations

import json

from sitq.backends.nats._client import Client
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import WORKER_EXPIRES, WORKER_ID, decode, encode
from sitq.models import WorkerRecord

_MAX_WORKERS = 100_000


class Workers:
    """``put_worker``, ``remove_worker`` and ``list_workers`` of one backend."""

    def __init__(self, client: Client, index: Index) -> None:
        self._client = client
        self._index = index
        self._subject = f"{index.prefix}.workers"
        self._written: dict[str, int] = {}
        """The sequence of the latest entry this backend wrote, per worker id."""

    async def put(self, record: WorkerRecord) -> None:
        """Write the worker's entry; delete the one it replaces."""
        head = {WORKER_ID: record.worker_id, WORKER_EXPIRES: record.expires_at}
        ack = await self._client.one(self._subject, encode(head, record.data), None)
        seq = ack_seq(ack)
        previous = self._written.get(record.worker_id)
        self._written[record.worker_id] = seq
        if previous:
            self._index.drop([previous])

    async def remove(self, worker_id: str) -> None:
        """Delete the worker's entries (those this backend wrote; a listing finds others)."""
        previous = self._written.pop(worker_id, None)
        if previous:
            await self._index.drop_now([previous])
        for seq, rec in await self._read():
            if rec.worker_id == worker_id:
                await self._index.drop_now([seq])

    async def _read(self) -> list[tuple[int, WorkerRecord]]:
        found = await self._index.forward_raw(self._subject, 1, _MAX_WORKERS)
        out = []
        for seq, data, _ in found:
            try:
                head, tail = decode(data)
                out.append(
                    (
                        seq,
                        WorkerRecord(
                            str(head[WORKER_ID]), bytes(tail), float(head[WORKER_EXPIRES])
                        ),
                    )
                )
            except (ValueError, KeyError, TypeError, json.JSONDecodeError):
                continue
        return out

    async def list(self, now: float) -> list[WorkerRecord]:
        """The latest unexpired record of each worker, by worker id; expired and replaced
        entries are deleted."""
        latest: dict[str, tuple[int, WorkerRecord]] = {}
        doomed = []
        for seq, rec in await self._read():
            old = latest.get(rec.worker_id)
            if old is not None:
                doomed.append(old[0])
            latest[rec.worker_id] = (seq, rec)
        alive = []
        for seq, rec in latest.values():
            if rec.expires_at > now:
                alive.append(rec)
            else:
                doomed.append(seq)
        self._index.drop(doomed)
        return sorted(alive, key=lambda r: r.worker_id)
