"""The Redis backend's steps for moving tasks to another store (see ``Backend.hold``,
``put_stored`` and ``drop_held``): one script per queue each (``scripts/hold.lua``,
``put_stored.lua``, ``drop_held.lua``), in the queue's slot.

``hold`` takes a pending task off the structure that holds it (``ready``, ``sl`` and
``sched``, or its key's parked set) and marks it running under the mover's claim in the same
script, so a worker's claim (which pops ``ready`` in its own script) and a hold never both get
it. ``put_stored`` handles the id index as ``enqueue`` does an explicit id: checked and set in
the script on a standalone server, claimed under a token first on a Redis Cluster
(``IdIndex.enqueue_claimed``). ``drop_held`` deletes a task only under its current claim, then
its id index entry as ``purge_tasks`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sitq.backends.redis._keys import queues_key
from sitq.backends.redis._records import opt
from sitq.backends.redis._scripts import evalsha
from sitq.backends.redis._wire import Command, raise_errors
from sitq.models import MAX_ETA_TIMESTAMP, ClaimRef, HeldTask, NewTask, StoredTask

if TYPE_CHECKING:
    from sitq.backends.redis.backend import RedisBackend

# Tasks per put_stored script call (as enqueue chunks them).
_CHUNK = 100
# hold.lua's fields per task after its id (see HELD there), then the fencing token.
_HELD = 13


def _value(raw: Any) -> bytes | None:
    """A field of hold.lua's reply: ``None`` if absent, else its value."""
    data = bytes(raw)
    return data[1:] if data else None


def _text(raw: Any, default: str = "") -> str:
    value = _value(raw)
    return default if value is None else value.decode()


def _held(queue: str, reply: Sequence[Any]) -> list[HeldTask]:
    held = []
    step = _HELD + 2
    for j in range(0, len(reply), step):
        task_id = bytes(reply[j]).decode()
        f = reply[j + 1 : j + 1 + _HELD]
        ckey = _value(f[6])
        climit = _value(f[7])
        task = NewTask(
            id=task_id,
            queue=queue,
            payload=_value(f[0]) or b"",
            options=_text(f[1]),
            priority=int(_text(f[2], "0")),
            eta=float(_text(f[3], "0")),
            enqueued_at=float(_text(f[4], "0")),
            result_ttl=float(_text(f[5], "0")),
            concurrency_key=None if ckey is None else ckey.decode(),
            concurrency_limit=None if climit is None else int(climit),
            function=_text(f[8]),
        )
        error = _value(f[11])
        traceback = _value(f[12])
        record = StoredTask(
            task,
            attempts=int(_text(f[9], "0")),
            retries=int(_text(f[10], "0")),
            error=None if error is None else error.decode(),
            traceback=None if traceback is None else traceback.decode(),
        )
        held.append(HeldTask(record, ClaimRef(task_id, int(reply[j + 1 + _HELD]))))
    return held


async def hold(
    backend: RedisBackend, queues: Sequence[str], limit: int, holder: str
) -> list[HeldTask]:
    """Hold up to ``limit`` tasks, one script per queue, queue after queue."""
    held: list[HeldTask] = []
    for queue in queues:
        if len(held) >= limit:
            break
        k = backend._queue_keys(queue)
        (reply,) = await backend._wire.exec(
            [
                evalsha(
                    "hold",
                    [k.ready, k.sched, k.leases, k.ck, k.sl, k.pk, k.run, k.seq],
                    [k.task, limit - len(held), holder, repr(MAX_ETA_TIMESTAMP)],
                )
            ]
        )  # safe to retry: a hold run again holds the tasks of the first run first
        raise_errors([reply])
        held += _held(queue, reply)
    return held


def _calls(
    backend: RedisBackend,
    records: Sequence[StoredTask],
    indices: Sequence[int],
    commands: list[Command],
    kinds: dict[int, str] | None = None,
) -> list[list[int]]:
    """Append the put_stored script calls for ``records[i] for i in indices`` (one per queue
    and chunk) to ``commands``; return the indices of each call. ``kinds`` gives each id's
    claim on a Redis Cluster (``IdIndex.enqueue_claimed``); on a standalone server the
    script checks and sets the id index keys it is given."""
    groups: dict[str, list[int]] = {}
    for i in indices:
        groups.setdefault(records[i].task.queue, []).append(i)
    calls: list[list[int]] = []
    for queue, members in groups.items():
        k = backend._queue_keys(queue)
        for start in range(0, len(members), _CHUNK):
            chunk = members[start : start + _CHUNK]
            calls.append(chunk)
            keys = [k.ready, k.sched, k.seq, k.done_s, k.done_f, k.done_c]
            args: list[Any] = [k.task, k.work, queue, backend.prefix]
            for i in chunk:
                item = records[i]
                t = item.task
                if kinds is None:
                    keys.append(k.index + t.id)
                args += [
                    t.id,
                    b"0" if kinds is None else kinds[i],
                    t.priority,
                    repr(float(t.eta)),
                    t.payload,
                    t.options,
                    repr(float(t.result_ttl)),
                    t.concurrency_key or b"",
                    b"" if t.concurrency_limit is None else t.concurrency_limit,
                    t.function,
                    repr(float(t.enqueued_at)),
                    item.attempts,
                    item.retries,
                    opt(item.error),
                    opt(item.traceback),
                ]
            commands.append(evalsha("put_stored", keys, args))
    return calls


async def put_stored(backend: RedisBackend, records: Sequence[StoredTask]) -> list[bool]:
    """Store the records, one script per queue and chunk; an id still known is left alone."""
    stored = [False] * len(records)
    if not records:
        return stored
    queues = {r.task.queue for r in records}
    registered: list[Command] = [("SADD", queues_key(backend.prefix), q) for q in queues]
    raise_errors(await backend._wire.exec(registered))
    backend._registered.update(queues)
    everyone = list(range(len(records)))
    if backend.cluster:
        tasks = [r.task for r in records]

        def calls(
            _tasks: Sequence[NewTask],
            indices: Sequence[int],
            commands: list[Command],
            kinds: dict[int, str],
        ) -> list[list[int]]:
            return _calls(backend, records, indices, commands, kinds)

        await backend._index.enqueue_claimed(tasks, everyone, stored, calls)
        return stored
    commands: list[Command] = []
    chunks = _calls(backend, records, everyone, commands)
    replies = await backend._wire.exec(commands)
    raise_errors(replies)
    for chunk, reply in zip(chunks, replies, strict=True):
        for i, flag in zip(chunk, bytes(reply), strict=True):
            if flag == 49:  # b"1"
                stored[i] = True
                backend._index.remember(records[i].task.id, records[i].task.queue)
    return stored


async def drop_held(backend: RedisBackend, refs: Sequence[ClaimRef]) -> list[bool]:
    """Delete the tasks still held under these claims, one script per queue (named by the
    id index), then their id index entries."""
    where = await backend._index.lookup_many(r.task_id for r in refs)
    groups: dict[str, list[int]] = {}
    for i, ref in enumerate(refs):
        queue = where.get(ref.task_id)
        if queue is not None:
            groups.setdefault(queue, []).append(i)
    commands: list[Command] = []
    for queue, indices in groups.items():
        k = backend._queue_keys(queue)
        args: list[Any] = [k.task]
        for i in indices:
            args += [refs[i].task_id, refs[i].fencing_token]
        commands.append(evalsha("drop_held", [k.leases, k.run], args))
    # Not retried: a drop that ran twice would report its removals as refused.
    replies = await backend._wire.exec(commands, retry=False)
    raise_errors(replies)
    dropped = [False] * len(refs)
    removed: list[tuple[str, str]] = []
    for (queue, indices), reply in zip(groups.items(), replies, strict=True):
        for i, flag in zip(indices, bytes(reply), strict=True):
            if flag == 49:  # b"1"
                dropped[i] = True
                removed.append((queue, refs[i].task_id))
    if removed:
        await backend._index.unindex(removed, cluster=backend.cluster)
    return dropped
