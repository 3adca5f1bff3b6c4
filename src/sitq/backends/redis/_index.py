"""Which queue holds a task id: the id index (``<prefix>:id:<id>``, a key in its own slot that
names the queue), and the queues remembered for the ids this backend object enqueued or
claimed, so that the common paths skip that lookup.

On a standalone server the enqueue and unindex scripts check and set an entry in the same step
as the queue's keys. On a Redis Cluster the entry's slot is elsewhere: an explicit id claims
its entry under a token first (``scripts/claim_index.lua``), and the entry moves to another
queue only once the old queue has fenced the token and lacks the id (``scripts/revoke.lua``);
a purged id's entry goes the same way.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from sitq.backends.redis._keys import QueueKeys, entry_queue, parse_entry
from sitq.backends.redis._scripts import CLAIM_WINDOW_MS, evalsha
from sitq.backends.redis._wire import Command, Wire, raise_errors
from sitq.errors import BackendError
from sitq.models import NewTask

__all__ = ["EnqueueCalls", "IdIndex"]

# The ids whose queue one backend object remembers, at most (the oldest are forgotten).
_HINTS = 100_000
# Rounds of claim / enqueue / takeover an explicit id on a Redis Cluster may take.
_CLAIM_TRIES = 30
# A claim on another queue younger than this is likely still enqueueing: look again once,
# after a pause, before fencing it.
_FRESH_MS = 1000

EnqueueCalls = Callable[
    [Sequence[NewTask], Sequence[int], list[Command], dict[int, str]], list[list[int]]
]
"""Appends the enqueue script calls for some of the tasks to the commands, with the claim of
each explicit id; returns the task indices of each call (``RedisBackend._enqueue_calls``)."""


class IdIndex:
    """The id index of one backend object, read and written through ``wire``."""

    def __init__(
        self,
        wire: Wire,
        prefix: str,
        queue_keys: Callable[[str], QueueKeys],
        describe: Callable[[], str],
    ) -> None:
        self._wire = wire
        self._prefix = prefix
        self._queue_keys = queue_keys
        self._describe = describe
        self.hints: OrderedDict[str, str] = OrderedDict()
        """The queue of each id remembered, oldest first."""

    def key(self, task_id: str) -> str:
        """The id index key of ``task_id``."""
        return f"{self._prefix}:id:{task_id}"

    def remember(self, task_id: str, queue: str) -> None:
        """Remember that ``queue`` holds ``task_id``."""
        hints = self.hints
        hints[task_id] = queue
        if len(hints) > _HINTS:
            hints.popitem(last=False)

    def forget(self, task_id: str) -> None:
        """Forget the queue of ``task_id`` (it may have gone, or be elsewhere)."""
        self.hints.pop(task_id, None)

    async def lookup(self, task_id: str) -> str | None:
        """The queue the id index names for ``task_id``, if any."""
        (reply,) = await self._wire.exec([("GET", self.key(task_id))])
        raise_errors([reply])
        return None if reply is None else entry_queue(reply)

    async def lookup_many(self, task_ids: Iterable[str]) -> dict[str, str]:
        """The queue the id index names for each task id that has an entry (no remembered
        queue is trusted: for operator actions, which must not act on a stale one)."""
        unique = list(dict.fromkeys(task_ids))
        if not unique:
            return {}
        replies = await self._wire.exec([("GET", self.key(i)) for i in unique])
        raise_errors(replies)
        return {
            task_id: entry_queue(reply)
            for task_id, reply in zip(unique, replies, strict=True)
            if reply is not None
        }

    async def locate(self, task_ids: Iterable[str]) -> dict[str, str]:
        """The queue of each task id that has one (remembered, else from the id index)."""
        found: dict[str, str] = {}
        unknown: list[str] = []
        for task_id in task_ids:
            queue = self.hints.get(task_id)
            if queue is not None:
                found[task_id] = queue
            elif task_id not in found:
                unknown.append(task_id)
        if unknown:
            unknown = list(dict.fromkeys(unknown))
            replies = await self._wire.exec([("GET", self.key(i)) for i in unknown])
            raise_errors(replies)
            for task_id, reply in zip(unknown, replies, strict=True):
                if reply is not None:
                    found[task_id] = entry_queue(reply)
        return found

    async def enqueue_claimed(
        self,
        tasks: Sequence[NewTask],
        pending: list[int],
        stored: list[bool],
        enqueue_calls: EnqueueCalls,
    ) -> None:
        """Enqueue explicit ids on a Redis Cluster, where an id's index entry and its queue are
        in different slots (see scripts/claim_index.lua): claim each id's entry, then in one
        round trip store the ids whose entry names their queue and revoke, on the queue the
        entry names, the claim of the others (the id is known if it is still there). A revoked
        entry is taken over by compare-and-set in the next round. Sets ``stored[i]``."""
        replace: dict[int, str] = {}
        waited: set[int] = set()
        for attempt in range(_CLAIM_TRIES):
            entries = await self._wire.exec(
                [
                    evalsha(
                        "claim_index",
                        [self.key(tasks[i].id)],
                        [tasks[i].queue, uuid.uuid4().hex[:16], replace.pop(i, "")],
                    )
                    for i in pending
                ]
            )
            raise_errors(entries)
            commands: list[Command] = []
            kinds: dict[int, str] = {}
            claims: dict[int, str] = {}
            revoked: list[tuple[int, str, str]] = []
            again: list[int] = []
            for i, (raw, raw_now) in zip(pending, entries, strict=True):
                entry = bytes(raw).decode()
                queue, token, claimed = parse_entry(entry)
                if queue == tasks[i].queue:
                    kinds[i] = f"{claimed} {token}"
                    claims[i] = entry
                elif int(raw_now) - claimed < _FRESH_MS and i not in waited:
                    waited.add(i)
                    again.append(i)
                else:
                    k = self._queue_keys(queue)
                    commands.append(
                        evalsha(
                            "revoke",
                            [k.task + tasks[i].id, k.fence + tasks[i].id],
                            [token, claimed],
                        )
                    )
                    revoked.append((i, queue, entry))
            calls = enqueue_calls(tasks, list(kinds), commands, kinds)
            replies = await self._wire.exec(commands)
            raise_errors(replies)
            contested = bool(again)
            for (i, queue, entry), alive in zip(revoked, replies[: len(revoked)], strict=True):
                if alive:
                    self.remember(tasks[i].id, queue)  # known there: left alone
                else:
                    replace[i] = entry
                    again.append(i)
            for chunk, reply in zip(calls, replies[len(revoked) :], strict=True):
                for i, flag in zip(chunk, bytes(reply).decode(), strict=True):
                    if flag == "1":
                        stored[i] = True
                        self.remember(tasks[i].id, tasks[i].queue)
                    elif flag == "0":
                        self.remember(tasks[i].id, tasks[i].queue)
                    else:
                        if flag == "F":
                            # Another queue is taking the id over, or the taker died before
                            # its compare-and-set: a fenced entry may be replaced.
                            replace[i] = claims[i]
                            contested = True
                        again.append(i)
            pending = again
            if not pending:
                return
            if contested:
                await asyncio.sleep(random.uniform(0.001, 0.002 * 2 ** min(attempt, 5)))
        raise BackendError(
            f"Redis at {self._describe()}: task ids {[tasks[i].id for i in pending][:5]} were "
            f"still contested after {_CLAIM_TRIES} rounds (enqueued on other queues at the "
            "same time again and again, or the cluster nodes' clocks disagree by more than "
            f"{CLAIM_WINDOW_MS // 1000} s)"
        )

    async def replace_claimed(self, task: NewTask, call: Callable[[str], Command]) -> str:
        """Run ``scripts/replace.lua`` for an explicit id on a Redis Cluster (``call(kind)`` is
        its command) under a claim of the id's index entry, as ``enqueue_claimed`` stores one:
        claim the entry, run the script while the entry names the task's queue, or else revoke
        the claim of the queue it names and take the entry over. Returns the script's reply,
        or ``"Q"`` when the id is alive on the queue the entry names."""
        key = self.key(task.id)
        replace = ""
        waited = False
        for attempt in range(_CLAIM_TRIES):
            (claimed,) = await self._wire.exec(
                [evalsha("claim_index", [key], [task.queue, uuid.uuid4().hex[:16], replace])]
            )
            raise_errors([claimed])
            raw, raw_now = claimed
            entry = bytes(raw).decode()
            queue, token, at = parse_entry(entry)
            replace = ""
            pause = False
            if queue == task.queue:
                (reply,) = await self._wire.exec([call(f"{at} {token}")])
                raise_errors([reply])
                flag = bytes(reply).decode()
                if flag not in ("F", "S"):
                    return flag
                if flag == "F":
                    replace = entry  # fenced by a takeover: the entry may be replaced
                    pause = True
            elif int(raw_now) - at < _FRESH_MS and not waited:
                waited = pause = True  # likely still enqueueing there: look once more first
            else:
                k = self._queue_keys(queue)
                (alive,) = await self._wire.exec(
                    [evalsha("revoke", [k.task + task.id, k.fence + task.id], [token, at])]
                )
                raise_errors([alive])
                if alive:
                    self.remember(task.id, queue)
                    return "Q"
                replace = entry
            if pause:
                await asyncio.sleep(random.uniform(0.001, 0.002 * 2 ** min(attempt, 5)))
        raise BackendError(
            f"Redis at {self._describe()}: task id {task.id!r} was still contested after "
            f"{_CLAIM_TRIES} rounds (enqueued on other queues at the same time again and "
            "again, or the cluster nodes' clocks disagree by more than "
            f"{CLAIM_WINDOW_MS // 1000} s)"
        )

    async def unindex(self, removed: Sequence[tuple[str, str]], *, cluster: bool) -> None:
        """Drop the entries of purged ids (``(queue, id)`` pairs) and forget their queues."""
        if cluster:
            await self._unindex_cluster(removed)
        else:
            # The entry goes only if it names the queue and the task is gone there, in one
            # step: an id enqueued again meanwhile keeps it.
            raise_errors(
                await self._wire.exec(
                    [
                        evalsha("unindex", [self.key(i), self._queue_keys(q).task + i], [q])
                        for q, i in removed
                    ]
                )
            )
        for _, task_id in removed:
            self.forget(task_id)

    async def _unindex_cluster(self, removed: Sequence[tuple[str, str]]) -> None:
        """Drop the index entries of purged ids on a Redis Cluster: an entry that names the
        purged queue goes once a revoke (see scripts/claim_index.lua) found the id gone there,
        and only if it is unchanged since it was read."""
        entries = await self._wire.exec([("GET", self.key(i)) for _, i in removed])
        raise_errors(entries)
        owned = []
        for (queue, task_id), raw in zip(removed, entries, strict=True):
            if raw is not None and entry_queue(raw) == queue:
                owned.append((queue, task_id, bytes(raw).decode()))
        if not owned:
            return
        commands: list[Command] = []
        for queue, task_id, entry in owned:
            _, token, claimed = parse_entry(entry)
            k = self._queue_keys(queue)
            commands.append(
                evalsha("revoke", [k.task + task_id, k.fence + task_id], [token, claimed])
            )
        alive = await self._wire.exec(commands)
        raise_errors(alive)
        gone = [
            evalsha("unindex", [self.key(task_id)], [entry])
            for (_, task_id, entry), exists in zip(owned, alive, strict=True)
            if not exists
        ]
        if gone:
            raise_errors(await self._wire.exec(gone))
