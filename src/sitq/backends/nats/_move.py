"""Moving tasks to another store on the NATS backend (see ``Backend.hold``, ``put_stored``
and ``drop_held``), on the task records and work messages as the other steps keep them.

* ``hold`` finds tasks through the listing index (pending entries, and running entries of
  the mover for a run cut short) and takes each with a write conditioned on the revision it
  read, as a claim does: of a worker's claim and a hold, only the write that replaces that
  revision is stored, and the other fails. The held record is running under the mover's
  worker id, its fencing token the revision it replaced and its lease until the end of time,
  so a worker that receives its message puts it back (for a day at a time). It keeps its
  payload and options (a claim's record leaves them to the work message), and its attempts.
* ``put_stored`` writes a task as ``enqueue`` writes an explicit id (listing entry and work
  message, then the record, created only where the key has none or an expired result), with
  the record's fields as the other store kept them.
* ``drop_held`` deletes the record's exact revision, read with the hold's fencing token; a
  record written since stays. The work message left behind is dropped by the worker that
  receives it (its record is gone), as after ``purge_tasks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sitq.backends.nats._client import Client, Got
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._consumers import Consumers
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._listing import Lister
from sitq.backends.nats._records import (
    ATTEMPTS,
    CANCEL_REQUESTED,
    CONCURRENCY_KEY,
    CONCURRENCY_LIMIT,
    ENQUEUED_AT,
    ERROR,
    ETA,
    FENCE,
    FUNCTION,
    HAS_PAYLOAD,
    LEASE_UNTIL,
    LIST_SEQ,
    LIST_TOKEN,
    OPTIONS,
    PRIORITY,
    PROGRESS,
    PROGRESS_MESSAGE,
    QUEUE,
    RESULT_TTL,
    RETRIES,
    STARTED_AT,
    STATE,
    TASK_ID,
    TRACEBACK,
    WORKER,
    encode,
    expired,
    message_body,
    new_record,
    running_token,
    task_key,
)
from sitq.errors import BackendError
from sitq.models import (
    MAX_ETA_TIMESTAMP,
    ClaimRef,
    HeldTask,
    NewTask,
    StoredTask,
    TaskStatus,
)

# Listing entries read per page while looking for tasks to hold.
_PAGE = 500


class Mover:
    """The steps of moving tasks to another store, for one backend."""

    def __init__(
        self,
        client: Client,
        clock: ServerClock,
        consumers: Consumers,
        index: Index,
        lister: Lister,
        generation: Callable[[], str],
    ) -> None:
        self._client = client
        self._clock = clock
        self._consumers = consumers
        self._index = index
        self._lister = lister
        self._generation = generation

    # -- hold -----------------------------------------------------------------------------

    async def hold(self, queues: Sequence[str], limit: int, holder: str) -> list[HeldTask]:
        """Hold up to ``limit`` tasks: those ``holder`` holds already, then pending ones, in
        listing order (priority, then the order they became pending)."""
        self._client.connection()
        held: list[HeldTask] = []
        for status in (TaskStatus.RUNNING, TaskStatus.PENDING):
            for queue in queues:
                after = None
                while len(held) < limit:
                    page = await self._lister.list_tasks(
                        status, queue, _PAGE, after, self._clock.now()
                    )
                    ids = [
                        s.task_id
                        for s in page.tasks
                        if status is TaskStatus.PENDING or s.worker_id == holder
                    ]
                    held += await self._hold_ids(ids[: limit - len(held)], queue, holder)
                    after = page.after
                    if after is None:
                        break
        return held

    async def _hold_ids(self, ids: Sequence[str], queue: str, holder: str) -> list[HeldTask]:
        """Hold each of these tasks that is still pending (or held by ``holder``) on
        ``queue``: its running listing entry first, then its record by a conditioned write."""
        if not ids:
            return []
        client = self._client
        keys = [task_key(i) for i in ids]
        found = await client.get_many(keys)
        now = self._clock.now()
        chosen: list[tuple[str, Got]] = []
        for key, got in zip(keys, found, strict=True):
            if got is None or got[0].get(QUEUE) != queue or not got[0].get(HAS_PAYLOAD):
                continue  # gone, elsewhere, or (held, then flagged) without its payload
            state, worker = got[0].get(STATE), got[0].get(WORKER)
            if state == "pending" or (state == "running" and worker == holder):
                chosen.append((key, got))
        if not chosen:
            return []
        subject = self._index.state_subject(TaskStatus.RUNNING, queue)
        entries = await client.many(
            self._index.entry(subject, key, f"r{got[2]}") for key, got in chosen
        )
        records = []
        for (_, (rec, _, rev)), entry in zip(chosen, entries, strict=True):
            new = {
                k: v
                for k, v in rec.items()
                if k not in (PROGRESS, PROGRESS_MESSAGE, CANCEL_REQUESTED)
            }
            new.update(
                {
                    STATE: "running",
                    FENCE: rev,
                    LEASE_UNTIL: MAX_ETA_TIMESTAMP,
                    WORKER: holder,
                    STARTED_AT: now,
                    LIST_SEQ: ack_seq(entry),
                }
            )
            new[LIST_TOKEN] = running_token(new)
            records.append(new)
        acks = await client.many(
            client.write(key, encode(new, got[1]), got[2])
            for (key, got), new in zip(chosen, records, strict=True)
        )
        held: list[HeldTask] = []
        dropped: list[int] = []
        for (_, (rec, tail, _)), new, ack in zip(chosen, records, acks, strict=True):
            if not ack_seq(ack):
                dropped.append(int(new[LIST_SEQ]))  # a worker (or another mover) came first
                continue
            dropped.append(int(rec.get(LIST_SEQ) or 0))
            held.append(HeldTask(_stored(new, tail), ClaimRef(str(new[TASK_ID]), int(new[FENCE]))))
        await self._index.drop_now(dropped)
        return held

    # -- put_stored -----------------------------------------------------------------------

    async def put_stored(self, records: Sequence[StoredTask]) -> list[bool]:
        """Store each record as a pending task, as ``enqueue`` stores an explicit id; an id
        still known is left alone."""
        stored = [False] * len(records)
        if not records:
            return stored
        client = self._client
        nc = client.connection()
        for item in records:
            if len(item.task.payload) + 2048 > nc.max_payload:
                raise BackendError(
                    f"task {item.task.id!r}: its payload of {len(item.task.payload)} bytes "
                    f"exceeds the NATS server's max_payload ({nc.max_payload} bytes)"
                )
        now = self._clock.now()
        keys = [task_key(r.task.id) for r in records]
        targets: list[tuple[int, int]] = []  # (record index, revision the write replaces)
        for i, got in enumerate(await client.get_many(keys)):
            if got is None:
                targets.append((i, 0))
            elif expired(got[0], now):
                targets.append((i, got[2]))
        if not targets:
            return stored
        built = {i: self._record(records[i]) for i, _ in targets}
        replies = await client.many(
            [
                self._index.entry(
                    self._index.pending_subject(
                        records[i].task.queue, records[i].task.priority, records[i].task.eta > now
                    ),
                    keys[i],
                    str(built[i][LIST_TOKEN]),
                )
                for i, _ in targets
            ]
            + [
                (
                    f"{client.subject_prefix}.q.{records[i].task.queue}.{records[i].task.priority}",
                    message_body(encode(built[i]), records[i].task.payload, 0),
                    None,
                )
                for i, _ in targets
            ]
        )
        for (i, _), reply in zip(targets, replies, strict=False):
            built[i][LIST_SEQ] = ack_seq(reply)
        for reply in replies[len(targets) :]:
            ack_seq(reply)
        acks = await client.many(
            client.write(keys[i], encode(built[i], records[i].task.payload), last)
            for i, last in targets
        )
        lost = []
        for (i, _), ack in zip(targets, acks, strict=True):
            stored[i] = bool(ack_seq(ack))
            if not stored[i]:
                lost.append(int(built[i][LIST_SEQ]))
        self._index.drop(lost)
        await self._consumers.announce({(r.task.queue, r.task.priority) for r in records})
        return stored

    def _record(self, item: StoredTask) -> dict[str, Any]:
        t = item.task
        rec = new_record(t, t.enqueued_at, t.eta, self._generation(), self._index.token())
        rec[ATTEMPTS] = item.attempts
        rec[RETRIES] = item.retries
        if item.error is not None:
            rec[ERROR] = item.error
        if item.traceback is not None:
            rec[TRACEBACK] = item.traceback
        return rec

    # -- drop_held ------------------------------------------------------------------------

    async def drop_held(self, refs: Sequence[ClaimRef]) -> list[bool]:
        """Delete each record still held under its claim: the exact revision read, so a
        record written since is left alone; then its listing entry."""
        client = self._client
        client.connection()
        if not refs:
            return []
        found = await client.get_many([task_key(r.task_id) for r in refs])
        current: list[tuple[int, int, int]] = []  # (ref index, revision, listing entry)
        for i, (ref, got) in enumerate(zip(refs, found, strict=True)):
            if got is None:
                continue
            rec, _, rev = got
            if rec.get(STATE) == "running" and rec.get(FENCE) == ref.fencing_token:
                current.append((i, rev, int(rec.get(LIST_SEQ) or 0)))
        dropped = [False] * len(refs)
        gone = await client.delete_many_each([rev for _, rev, _ in current])
        entries = []
        for (i, _, entry), ok in zip(current, gone, strict=True):
            dropped[i] = ok
            if ok:
                entries.append(entry)
        await self._index.drop_now(entries)
        return dropped


def _stored(rec: dict[str, Any], payload: bytes) -> StoredTask:
    """The record of a held task as another store takes it."""
    task = NewTask(
        id=str(rec[TASK_ID]),
        queue=str(rec[QUEUE]),
        payload=payload,
        options=str(rec.get(OPTIONS) or ""),
        priority=int(rec[PRIORITY]),
        eta=float(rec[ETA]),
        enqueued_at=float(rec[ENQUEUED_AT]),
        result_ttl=float(rec[RESULT_TTL]),
        concurrency_key=rec.get(CONCURRENCY_KEY),
        concurrency_limit=rec.get(CONCURRENCY_LIMIT),
        function=str(rec.get(FUNCTION) or ""),
    )
    return StoredTask(
        task,
        attempts=int(rec[ATTEMPTS]),
        retries=int(rec[RETRIES]),
        error=rec.get(ERROR),
        traceback=rec.get(TRACEBACK),
    )
