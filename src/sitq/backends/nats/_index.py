"""The listing index of the NATS backend: the stream ``IX_<stream>`` (limits retention) holds
one small entry per task, ``{"k": task key, "t": token}``, on a subject naming the task's state
and queue. JetStream keeps no sorted index, but a stream is ordered by sequence and a consumer
filtered on a subject skips the messages of other subjects block by block; so each state's
entries, in the order they were written, are the listing.

* ``sitq.<stream>.l.p.<queue>.<priority>``: pending tasks that were due when they became
  pending; ``l.w.<queue>.<priority>``: pending tasks that were scheduled for later.
* ``l.r.<queue>``: running; ``l.s.<queue>``, ``l.f.<queue>``, ``l.c.<queue>``: succeeded,
  failed, cancelled.
* ``l.workers``: worker records (``_workers``).

An entry stands for its task while the record still holds the entry's token (``LIST_TOKEN``)
in that state: a reader checks every entry against its record, so a lost race or a crash can
leave a stale entry but never a wrong listing. The step that changes a task's state writes the
new entry and deletes the old one by its sequence, which the record keeps (``LIST_SEQ``) or the
step's own writer knows; a stale entry left by a crash is deleted by the reader that finds it.

This module holds the subjects, the entry writes and deletions, and the readers: forward from
a sequence through an ephemeral consumer, and backward (most recent first) by counting, with
the ``num_pending`` of ephemeral consumers, how many entries stand between two sequences.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sitq.backends.nats._client import Client, Request
from sitq.backends.nats._jetstream import NS, ack_info, api_result, stream_seq
from sitq.backends.nats._records import ENTRY_KEY, ENTRY_TOKEN
from sitq.errors import BackendError
from sitq.models import TaskStatus

log = logging.getLogger("sitq.nats")

STALE_AFTER: Final = 60.0
"""Seconds after which an entry whose record does not hold its token is deleted by a reader
(a younger one may belong to a write still on its way)."""
_LETTER: Final = {
    TaskStatus.RUNNING: "r",
    TaskStatus.SUCCESS: "s",
    TaskStatus.FAILED: "f",
    TaskStatus.CANCELLED: "c",
}
_FETCH: Final = 256
_SPLIT: Final = 8


@dataclass(frozen=True, slots=True)
class Found:
    """An entry as read: its sequence, the task key and token, and its server timestamp."""

    seq: int
    key: str
    token: str
    stamp: float


class Index:
    """The listing index of one backend: subjects, writes, deletions and readers."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.stream = f"IX_{client.stream}"
        self.prefix = f"{client.subject_prefix}.l"
        self._token_prefix = secrets.token_hex(4)
        self._tokens = 0
        self._background: set[asyncio.Task[None]] = set()

    def config(self, replicas: int) -> dict[str, Any]:
        """The index stream's configuration."""
        return {
            "name": self.stream,
            "subjects": [f"{self.prefix}.>"],
            "retention": "limits",
            "storage": "file",
            "num_replicas": replicas,
            "discard": "old",
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": 0,
            "max_msg_size": -1,
            "allow_direct": True,
            "duplicate_window": 120 * NS,
        }

    def token(self) -> str:
        """A new listing token, unique to this backend object's writes."""
        self._tokens += 1
        return f"{self._token_prefix}{self._tokens:x}"

    # -- subjects -------------------------------------------------------------------------

    def pending_subject(self, queue: str, priority: int, scheduled: bool) -> str:
        """The subject of a pending task's entry."""
        return f"{self.prefix}.{'w' if scheduled else 'p'}.{queue}.{priority}"

    def subject(self, status: TaskStatus, queue: str | None) -> str:
        """The subject (or filter, for every queue) of the entries of a state other than
        pending."""
        return f"{self.prefix}.{_LETTER[status]}.{queue or '*'}"

    def state_subject(self, status: TaskStatus, queue: str) -> str:
        """The subject of a running or finished task's entry."""
        return self.subject(status, queue)

    # -- writes ---------------------------------------------------------------------------

    def entry(self, subject: str, key: str, token: str) -> Request:
        """The request that writes an entry; its ack's sequence is the entry's."""
        body = json.dumps({ENTRY_KEY: key, ENTRY_TOKEN: token}, separators=(",", ":"))
        return (subject, body.encode(), None)

    def drop(self, seqs: Iterable[int]) -> None:
        """Delete entries by sequence, in the background (a failure leaves a stale entry,
        which a reader deletes)."""
        wanted = [s for s in seqs if s]
        if wanted and self._client.nc is not None:
            task = asyncio.ensure_future(self._drop(wanted))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def drop_now(self, seqs: Iterable[int]) -> None:
        """Delete entries by sequence and wait for it."""
        wanted = [s for s in seqs if s]
        if wanted:
            await self._drop(wanted)

    async def _drop(self, seqs: list[int]) -> None:
        try:
            await self._client.many(
                (
                    f"$JS.API.STREAM.MSG.DELETE.{self.stream}",
                    json.dumps({"seq": seq, "no_erase": True}).encode(),
                    None,
                )
                for seq in seqs
            )
        except BackendError as exc:
            log.debug("deleting %d listing entries failed: %s", len(seqs), exc)

    def forget_background(self) -> None:
        """Forget deletions in flight (their event loop has ended)."""
        self._background = set()

    async def settle_background(self) -> None:
        """Wait for the deletions in flight (before closing the connection)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # -- reading --------------------------------------------------------------------------

    async def subjects(self, filter_subject: str) -> dict[str, int]:
        """The subjects matching ``filter_subject`` that hold entries, with their counts."""
        info = await self._client.api(
            f"STREAM.INFO.{self.stream}", {"subjects_filter": filter_subject}
        )
        return dict(((info or {}).get("state") or {}).get("subjects") or {})

    async def bounds(self) -> tuple[int, int]:
        """The stream's first and last sequence."""
        info = await self._client.api(f"STREAM.INFO.{self.stream}", None)
        state = (info or {}).get("state") or {}
        return int(state.get("first_seq", 0)), int(state.get("last_seq", 0))

    async def _consumers(self, subject: str, starts: Sequence[int]) -> list[tuple[str, int]]:
        """Ephemeral consumers on ``subject`` starting at each sequence: (name, how many
        entries they would deliver)."""
        client = self._client
        requests = []
        names = []
        for start in starts:
            name = "ix_" + secrets.token_hex(8)
            names.append(name)
            config = {
                "name": name,
                "deliver_policy": "by_start_sequence",
                "opt_start_seq": max(start, 1),
                "ack_policy": "all",
                "max_ack_pending": -1,
                "filter_subject": subject,
                "mem_storage": True,
                "num_replicas": 1,
                "inactive_threshold": 30 * NS,
            }
            body = json.dumps({"stream_name": self.stream, "config": config}).encode()
            requests.append((f"$JS.API.CONSUMER.CREATE.{self.stream}.{name}", body, None))
        out = []
        for name, reply in zip(names, await client.many(requests), strict=True):
            created = api_result(reply, ())
            assert created is not None
            out.append((name, int(created.get("num_pending", 0))))
        return out

    def _delete_consumers(self, names: Iterable[str]) -> None:
        """Remove ephemeral consumers in the background (they expire anyway)."""
        requests = [(f"$JS.API.CONSUMER.DELETE.{self.stream}.{n}", b"", None) for n in names]
        if requests and self._client.nc is not None:

            async def delete() -> None:
                try:
                    await self._client.many(requests)
                except BackendError as exc:
                    log.debug("removing listing consumers failed: %s", exc)

            task = asyncio.ensure_future(delete())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _fetch(self, name: str, count: int, stop: int | None) -> list[Found]:
        """Up to ``count`` entries from consumer ``name`` (those before sequence ``stop``)."""
        out = []
        for seq, data, stamp in await self._fetch_raw(name, count, stop):
            try:
                body = json.loads(data)
                key, token = str(body[ENTRY_KEY]), str(body[ENTRY_TOKEN])
            except (ValueError, KeyError, TypeError):
                continue
            out.append(Found(seq, key, token, stamp))
        return out

    async def _fetch_raw(
        self, name: str, count: int, stop: int | None
    ) -> list[tuple[int, bytes, float]]:
        """Up to ``count`` messages from consumer ``name`` (those before sequence ``stop``):
        (sequence, data, server timestamp)."""
        client = self._client
        nc = client.connection()
        out: list[tuple[int, bytes, float]] = []
        loop = asyncio.get_running_loop()
        while len(out) < count:
            batch = min(count - len(out), _FETCH)
            done: asyncio.Future[None] = loop.create_future()
            got: list[Any] = []

            async def on_msg(
                msg: Any, got: list[Any] = got, done: Any = done, batch: int = batch
            ) -> None:
                status = msg.headers.get("Status") if msg.headers else None
                if status:
                    if status != "100" and not done.done():
                        done.set_result(None)
                    return
                got.append(msg)
                if len(got) >= batch and not done.done():
                    done.set_result(None)

            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox, cb=on_msg)
            try:
                await nc.publish(
                    f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{name}",
                    json.dumps({"batch": batch, "no_wait": True}).encode(),
                    reply=inbox,
                )
                try:
                    await asyncio.wait_for(done, client.request_timeout)
                except TimeoutError:
                    raise BackendError("NATS: reading the listing index timed out") from None
            finally:
                try:
                    await sub.unsubscribe()
                except Exception as exc:  # the connection is going: the read failed anyway
                    log.debug("unsubscribing a listing read failed: %s", exc)
            for msg in got:
                seq = stream_seq(msg.reply)
                if stop is not None and seq >= stop:
                    return out
                out.append((seq, bytes(msg.data), ack_info(msg.reply)[1]))
            if len(got) < batch:
                break
        return out

    async def forward(self, subject: str, start: int, count: int) -> list[Found]:
        """Up to ``count`` entries on ``subject`` from sequence ``start`` on, oldest first."""
        ((name, pending),) = await self._consumers(subject, [start])
        try:
            return await self._fetch(name, min(count, pending), None) if pending else []
        finally:
            self._delete_consumers([name])

    async def forward_raw(
        self, subject: str, start: int, count: int
    ) -> list[tuple[int, bytes, float]]:
        """Like ``forward``, as (sequence, data, server timestamp) of any message."""
        ((name, pending),) = await self._consumers(subject, [start])
        try:
            return await self._fetch_raw(name, min(count, pending), None) if pending else []
        finally:
            self._delete_consumers([name])

    async def backward(self, subject: str, before: int | None, count: int) -> list[Found]:
        """About ``count`` entries (at least ``count`` where there are so many) on ``subject``
        before sequence ``before`` (``None``: the end), most recent first.

        A consumer only reads forward, but its ``num_pending`` counts the entries from its
        start: the start of the window read is searched for with counts (eight per round trip)
        until the window holds at most two pages, so a page reads at most two pages of entries.
        """
        first, last = await self.bounds()
        if not last or (before is not None and before <= first):
            return []
        top = last + 1 if before is None else min(before, last + 1)
        names: list[str] = []
        try:
            if top > last:
                above = 0
                (base,) = await self._consumers(subject, [first])
            else:
                base, (name_top, above) = await self._consumers(subject, [first, top])
                names.append(name_top)
            names.append(base[0])
            total = base[1] - above
            if total <= 0:
                return []
            # Narrow the window [lo, top) while it holds more than a few pages: eight counts
            # per round trip, each cutting the span where the page starts by eight.
            lo, name, inside = first, base[0], total
            hi = top
            while inside > 2 * count and hi - lo > 1:
                step = max((hi - lo) // _SPLIT, 1)
                starts = list(range(lo + step, hi, step))[: _SPLIT - 1]
                probes = await self._consumers(subject, starts)
                names += [n for n, _ in probes]
                for start, (probe, pending) in zip(starts, probes, strict=True):
                    if pending - above >= count:
                        lo, name, inside = start, probe, pending - above
                    else:
                        hi = start
                        break
            entries = await self._fetch(name, inside, top)
        finally:
            self._delete_consumers(names)
        entries.reverse()
        return entries
