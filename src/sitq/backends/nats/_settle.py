"""Leases and settlements on the NATS backend: every change a claim's holder makes is a write
of the task's record conditioned on the revision read, and only while the claim is current
(its fencing token is the record's); then the task's message is naked to match the new lease,
acked (finished), or naked to come back (retry, release)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sitq.backends.nats._claim import Held, Holdings
from sitq.backends.nats._client import Client
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._consumers import Consumers
from sitq.backends.nats._expiry import ExpiryIndex
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import (
    CANCEL_REQUESTED,
    CONCURRENCY_KEY,
    EXPIRES_AT,
    FENCE,
    LIST_SEQ,
    LIST_TOKEN,
    PRIORITY,
    PROGRESS,
    PROGRESS_MESSAGE,
    QUEUE,
    RESULT_TTL,
    STATE,
    TASK_ID,
    encode,
    expiry_class,
    finished,
    keyed,
    leased,
    released,
    released_until,
    rescheduled,
    split,
    task_key,
)
from sitq.backends.nats._slots import extend_slots, free_slots, slot_key
from sitq.models import (
    ClaimRef,
    Finish,
    LeaseState,
    Progress,
    Release,
    Reschedule,
    Settlement,
)

_State = tuple[Held | None, dict[str, Any] | None, int]
"""Per claim: (held, record to build on, its revision)."""
_Build = Callable[[dict[str, Any]], dict[str, Any]]
"""The record a change makes of the current one."""


class Settler:
    """Lease extensions and settlements of one backend's claims."""

    def __init__(
        self,
        client: Client,
        clock: ServerClock,
        consumers: Consumers,
        holdings: Holdings,
        expiry: ExpiryIndex,
        index: Index,
    ) -> None:
        self._client = client
        self._index = index
        self._clock = clock
        self._consumers = consumers
        self._holdings = holdings
        self._expiry = expiry

    async def _current(self, refs: Sequence[ClaimRef]) -> list[_State]:
        """Per claim: (held, record to build on, its revision) — from what this backend holds,
        or read when it holds nothing for the claim."""
        out: list[_State] = []
        unknown = []
        for i, ref in enumerate(refs):
            held = self._holdings.get((ref.task_id, ref.fencing_token))
            out.append((held, held.rec if held else None, held.rev if held else 0))
            if held is None:
                unknown.append(i)
        if unknown:
            found = await self._client.get_many([task_key(refs[i].task_id) for i in unknown])
            for i, got in zip(unknown, found, strict=True):
                if got is not None:
                    out[i] = (None, got[0], got[2])
        return out

    async def _fenced_writes(
        self,
        refs: Sequence[ClaimRef],
        build: list[_Build],
        state: list[_State] | None = None,
    ) -> list[tuple[int, dict[str, Any] | None]]:
        """Write ``build[i](record)`` for each claim that is current; retry on a lost race when
        the claim is still current (e.g. a cancel flag was set meanwhile). Per claim: (new
        revision, record written), or (0, record found) if the claim is not current."""
        client = self._client
        results: list[tuple[int, dict[str, Any] | None]] = [(0, None)] * len(refs)
        if state is None:
            state = await self._current(refs)
        todo = list(range(len(refs)))
        for _ in range(5):
            writes = []
            for i in todo:
                _, rec, rev = state[i]
                ref = refs[i]
                if rec is None or rec[STATE] != "running" or rec.get(FENCE) != ref.fencing_token:
                    results[i] = (0, rec)
                    continue
                new = build[i](rec)
                writes.append((i, new, rev))
            if not writes:
                break
            acks = await client.many(
                client.write(task_key(refs[i].task_id), encode(*split(new)), rev)
                for i, new, rev in writes
            )
            retry = []
            for (i, new, _), ack in zip(writes, acks, strict=True):
                rev = ack_seq(ack)
                if rev:
                    results[i] = (rev, new)
                else:
                    retry.append(i)
            if not retry:
                break
            found = await client.get_many([task_key(refs[i].task_id) for i in retry])
            for i, got in zip(retry, found, strict=True):
                held = state[i][0]
                state[i] = (held, got[0], got[2]) if got is not None else (held, None, 0)
                results[i] = (0, state[i][1])
            todo = retry
        return results

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Rewrite each current claim's lease and push its message's redelivery out to match."""
        now = self._clock.now()
        state = await self._current(claims)
        builders = [_with_entry(state[i][0], _extender(now + lease)) for i in range(len(claims))]
        # A task with a concurrency key keeps its slot first: a claim whose slot lapsed (its
        # lease ran out and another task may hold the slot now) is lost.
        slotted = [
            i
            for i, (_, rec, _) in enumerate(state)
            if rec is not None
            and keyed(rec)
            and rec[STATE] == "running"
            and rec.get(FENCE) == claims[i].fencing_token
        ]
        slot_of = {i: slot_key(rec) for i in slotted if (rec := state[i][1]) is not None}
        lapsed: set[int] = set()
        if slotted:
            items = [
                (slot_of[i], task_key(claims[i].task_id), claims[i].fencing_token) for i in slotted
            ]
            extended = await extend_slots(self._client, items, now + lease, now)
            lapsed = {i for i, ok in zip(slotted, extended, strict=True) if not ok}
            for i in lapsed:
                state[i] = (state[i][0], None, 0)
        results = await self._fenced_writes(claims, builders, state)
        drops: dict[str, set[tuple[str, int]]] = {}
        states = []
        for i, (ref, (rev, rec)) in enumerate(zip(claims, results, strict=True)):
            key = (ref.task_id, ref.fencing_token)
            if not rev or rec is None:
                self._holdings.forget(key)
                states.append(LeaseState.LOST)
                if i in slot_of and i not in lapsed:
                    drops.setdefault(slot_of[i], set()).add(
                        (task_key(ref.task_id), ref.fencing_token)
                    )
                continue
            held = self._holdings.get(key)
            if held is not None:  # (not settled meanwhile)
                held.rev, held.rec = rev, rec
                await self._client.nak(held.reply, lease)
            states.append(
                LeaseState.CANCEL_REQUESTED if rec.get(CANCEL_REQUESTED) else LeaseState.HELD
            )
        if drops:
            await free_slots(self._client, drops)
        return states

    async def save_progress(self, updates: Sequence[Progress]) -> None:
        """Write each current claim's progress into its record."""
        if not updates:
            return
        refs = [u.claim for u in updates]
        state = await self._current(refs)
        builders = [
            _with_entry(state[i][0], _progress(u.value, u.message)) for i, u in enumerate(updates)
        ]
        results = await self._fenced_writes(refs, builders, state)
        for ref, (rev, rec) in zip(refs, results, strict=True):
            held = self._holdings.get((ref.task_id, ref.fencing_token))
            if rev and rec is not None and held is not None:
                held.rev, held.rec = rev, rec

    async def _new_entries(
        self, settlements: Sequence[Settlement], state: list[_State], now: float
    ) -> list[tuple[str, int]]:
        """Write the listing entry of the state each current claim's settlement leads to
        (before the records, which keep its sequence): per settlement (token, sequence), or
        ("", 0) where the claim is not current."""
        index = self._index
        out: list[tuple[str, int]] = [("", 0)] * len(settlements)
        requests = []
        todo = []
        for i, (item, (_, rec, _)) in enumerate(zip(settlements, state, strict=True)):
            if rec is None or rec[STATE] != "running" or rec.get(FENCE) != item.claim.fencing_token:
                continue
            queue = str(rec[QUEUE])
            if isinstance(item, Finish):
                subject = index.state_subject(item.status, queue)
            else:
                eta = item.eta if isinstance(item, Reschedule) else now + item.delay
                subject = index.pending_subject(queue, int(rec[PRIORITY]), eta > now)
            token = index.token()
            todo.append((i, token))
            requests.append(index.entry(subject, task_key(item.claim.task_id), token))
        for (i, token), ack in zip(todo, await self._client.many(requests), strict=True):
            out[i] = (token, ack_seq(ack))
        return out

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Write each outcome if its claim is current, then ack (finish) or nak (retry, release)
        the message; finished tasks go into the expiry index."""
        if not settlements:
            return []
        client = self._client
        now = self._clock.now()
        refs = [s.claim for s in settlements]
        state = await self._current(refs)
        entries = await self._new_entries(settlements, state, now)
        builders = [
            _settler(s, now, held.kept if held else None, entry)
            for s, (held, _, _), entry in zip(settlements, state, entries, strict=True)
        ]
        before = [rec for _, rec, _ in state]
        results = await self._fenced_writes(refs, builders, state)
        gone = []
        for (rev, _), (token, seq), held, old in zip(
            results, entries, (h for h, _, _ in state), before, strict=True
        ):
            if rev:
                gone.append(held.entry if held and held.entry else _entry_of(old))
            elif token:
                gone.append(seq)
        self._index.drop(gone)
        applied: list[bool] = []
        expiring: dict[str, list[list[Any]]] = {}
        drops: dict[str, set[tuple[str, int]]] = {}
        freed: dict[tuple[str, str], int] = {}
        for item, (rev, rec) in zip(settlements, results, strict=True):
            key = (item.claim.task_id, item.claim.fencing_token)
            held = self._holdings.forget(key)
            known = rec if rec is not None else (held.rec if held else None)
            if known is not None and keyed(known):
                # Whether applied or refused, claims of the task up to this one are over.
                drops.setdefault(slot_key(known), set()).add((task_key(known[TASK_ID]), key[1]))
                if rev:
                    slot = (str(known[QUEUE]), str(known[CONCURRENCY_KEY]))
                    freed[slot] = freed.get(slot, 0) + 1
            if not rev:
                applied.append(False)
                continue
            assert rec is not None
            applied.append(True)
            reply = held.reply if held else None
            if isinstance(item, Finish):
                if reply:
                    await client.publish(reply, b"+ACK")
                expiring.setdefault(expiry_class(rec[RESULT_TTL]), []).append(
                    [task_key(rec[TASK_ID]), rev, rec[EXPIRES_AT], rec.get(LIST_SEQ) or 0]
                )
            elif isinstance(item, Reschedule):
                await client.nak(reply, max(item.eta - now, 0.0))
            elif item.delay > 0:
                await client.nak(reply, item.delay)
            elif reply:
                await client.publish(reply, b"-NAK")
        if drops:
            await free_slots(client, drops)
        for (queue, ck), count in freed.items():
            # Here first (a claim right after this settle finds them), then in every other
            # process (the notification also comes back here, finding less to wake).
            self._consumers.unpark(queue, ck, count)
            await client.publish(f"{client.subject_prefix}.n.k.{queue}", f"{count} {ck}".encode())
        if expiring:
            await self._expiry.add(expiring)
        return applied


def _entry_of(rec: dict[str, Any] | None) -> int:
    """The sequence of the listing entry a record keeps (0: unknown)."""
    return int(rec.get(LIST_SEQ) or 0) if rec is not None else 0


def _extender(until: float) -> _Build:
    def extend(rec: dict[str, Any]) -> dict[str, Any]:
        return leased(rec, until)

    return extend


def _progress(value: float, message: str | None) -> _Build:
    def progress(rec: dict[str, Any]) -> dict[str, Any]:
        return {**rec, PROGRESS: value, PROGRESS_MESSAGE: message}

    return progress


def _with_entry(held: Held | None, build: _Build) -> _Build:
    """``build``, also recording the claim's listing entry in the record when its holder knows
    it (a claim writes its entry in the same flush as the record, so the record learns it with
    its first later write)."""
    if held is None or not held.entry:
        return build
    entry = held.entry

    def with_entry(rec: dict[str, Any]) -> dict[str, Any]:
        new = build(rec)
        new[LIST_SEQ] = entry
        return new

    return with_entry


def _settler(
    item: Settlement, now: float, kept: tuple[bytes, str] | None, entry: tuple[str, int]
) -> _Build:
    """The change a settlement makes of the record (named after it: finish, reschedule,
    release); ``kept`` is the payload and options its holder has, ``entry`` the token and
    sequence of the listing entry of the state it leads to."""
    token, seq = entry

    def listed(new: dict[str, Any]) -> dict[str, Any]:
        new[LIST_TOKEN] = token
        if seq:
            new[LIST_SEQ] = seq
        return new

    def finish(rec: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(item, Finish)
        return listed(finished(rec, item, now, kept))

    def reschedule(rec: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(item, Reschedule)
        return listed(rescheduled(rec, item, kept))

    def release(rec: dict[str, Any]) -> dict[str, Any]:
        assert isinstance(item, Release)
        if item.delay > 0:
            return listed(released_until(rec, kept, now + item.delay))
        return listed(released(rec, kept))

    if isinstance(item, Finish):
        return finish
    if isinstance(item, Reschedule):
        return reschedule
    return release
