"""Requests to NATS JetStream for the NATS backend: one connection, one reply subscription that
multiplexes every request (a batch of requests goes out in one flush), the JetStream API, and
the key-value records read, written (conditioned on a revision) and deleted through the
bucket's stream. Every failure comes out as ``BackendError``.

The steps build on ``Client``; what the replies mean is in ``_jetstream`` and what the records
hold in ``_records``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Final

from sitq.backends.nats._jetstream import (
    ERR_DELETE_NO_MESSAGE,
    ERR_NO_MESSAGE,
    ERR_STREAM_NAME_IN_USE,
    ERR_STREAM_NOT_FOUND,
    ERR_SUBJECTS_OVERLAP,
    EXPECTED_LAST,
    NS,
    api_result,
    parse_time,
)
from sitq.backends.nats._records import Entry, decode
from sitq.errors import BackendError

log = logging.getLogger("sitq.nats")

CAS_TRIES: Final = 50
"""Attempts at a read-modify-write of one of sitq's own records before giving up."""
MAX_NAK_DELAY: Final = 86_400.0
"""Longest nak delay (seconds): a task due later is handed back once a day and naked again."""

Request = tuple[str, bytes, dict[str, str] | None]
"""A request as sent: subject, payload, headers."""
Got = tuple[dict[str, Any], bytes, int]
"""A task record as read: (record, tail, revision)."""


class Client:
    """The connection of one ``NATSBackend`` and the requests it makes.

    ``nc`` is the nats-py connection while connected (the backend sets and clears it); the
    stream names come from the backend's ``stream``.
    """

    def __init__(self, stream: str, request_timeout: float, where: str) -> None:
        self.stream = stream
        """The work-queue stream."""
        self.kv_stream = f"KV_{stream}"
        """The bucket's stream."""
        self.kv_prefix = f"$KV.{stream}."
        """The subject prefix of the bucket's keys."""
        self.subject_prefix = f"sitq.{stream}"
        """The prefix of sitq's own subjects (work, expiry index, notifications)."""
        self.request_timeout = request_timeout
        self.where = where
        """The servers and stream, without credentials, for error messages."""
        self.nc: Any = None
        self.last_error = ""
        """The connection's last error, for the messages of the failures it causes."""
        self.direct = True
        """Whether records are read by direct gets (else through the stream's leader)."""
        self._replies: dict[str, asyncio.Future[Any]] = {}
        self._reply_prefix = ""
        self._token = 0

    def connection(self) -> Any:
        """The connection, or ``BackendError`` if there is none or it is reconnecting."""
        nc = self.nc
        if nc is None:
            raise BackendError("NATSBackend is not connected: call `await backend.connect()`")
        if not nc.is_connected:
            raise BackendError(
                f"NATS connection lost ({self.last_error or 'reconnecting'}); the client is "
                "reconnecting"
            )
        return nc

    async def listen(self, nc: Any) -> Any:
        """Subscribe to the replies of this client's requests; returns the subscription."""
        self._reply_prefix = nc.new_inbox() + "."
        return await nc.subscribe(self._reply_prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Any) -> None:
        fut = self._replies.pop(msg.subject[len(self._reply_prefix) :], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def forget_requests(self) -> None:
        """Forget every request still waiting (its event loop has ended: nothing can be
        resolved there any more)."""
        self._replies = {}

    def fail_requests(self, error: BackendError) -> None:
        """Fail every request still waiting for its reply (connection closed or lost)."""
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(error)
        self._replies.clear()

    async def publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> None:
        """Fire and forget (acks, naks, notifications)."""
        nc = self.nc
        if nc is None:
            return
        try:
            await nc.publish(subject, payload, **kwargs)
        except Exception as exc:
            log.debug("NATS publish to %s failed: %s", subject, exc)

    async def nak(self, reply: str | None, delay: float) -> None:
        """Hand a delivered message back to be redelivered after ``delay`` seconds."""
        if reply:
            # A longer delay comes back early and is naked again by the claim, which re-reads
            # the record: the server's delay is an int64 of nanoseconds (292 years at most),
            # and one it cannot hold would redeliver at once, over and over.
            delay = delay if delay < MAX_NAK_DELAY else MAX_NAK_DELAY
            await self.publish(reply, b'-NAK {"delay": %d}' % max(int(delay * NS), 1_000_000))

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Any:
        """Publish a request; return the future of its reply."""
        nc = self.connection()
        self._token += 1
        token = str(self._token)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[token] = fut
        try:
            await nc.publish(subject, payload, reply=self._reply_prefix + token, headers=headers)
        except Exception as exc:
            self._replies.pop(token, None)
            raise BackendError(f"NATS: {type(exc).__name__}: {exc}") from exc
        fut.add_done_callback(functools.partial(self._drop_reply, token))
        return fut

    def _drop_reply(self, token: str, _fut: asyncio.Future[Any]) -> None:
        self._replies.pop(token, None)

    async def many(self, items: Iterable[Request], timeout: float = 0.0) -> list[Any]:
        """Send requests at once (one flush) and wait for every reply."""
        futs: list[asyncio.Future[Any]] = []
        try:
            for subject, payload, headers in items:
                futs.append(await self._send(subject, payload, headers))
        except BaseException:
            for f in futs:
                f.cancel()
            raise
        if not futs:
            return []
        loop = asyncio.get_running_loop()
        limit = timeout or self.request_timeout

        def expire() -> None:
            for f in futs:
                if not f.done():
                    f.set_exception(
                        BackendError(f"NATS request timed out after {limit:g} s ({self.where})")
                    )

        handle = loop.call_later(limit, expire)
        try:
            replies = [await f for f in futs]
        finally:
            handle.cancel()
            for f in futs:  # one failure fails the call; the others need no traceback
                if f.done() and not f.cancelled():
                    f.exception()
        for reply in replies:
            if reply.headers and reply.headers.get("Status") == "503":
                raise BackendError(
                    f"NATS: no responders for {reply.subject!r}: is JetStream enabled and the "
                    f"stream {self.stream!r} there?"
                )
        return replies

    async def one(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Any:
        """Send one request and wait for its reply."""
        return (await self.many([(subject, payload, headers)]))[0]

    async def api(
        self, op: str, body: dict[str, Any] | None, *, ok: tuple[int, ...] = ()
    ) -> dict[str, Any] | None:
        """A JetStream API call; ``None`` for the error codes in ``ok``."""
        payload = b"" if body is None else json.dumps(body).encode()
        reply = await self.one(f"$JS.API.{op}", payload, None)
        return api_result(reply, ok)

    async def ensure_stream(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """The stream's info, after creating it with ``config`` if it is missing."""
        info = await self.api(f"STREAM.INFO.{name}", None, ok=(ERR_STREAM_NOT_FOUND,))
        if info is None:
            # Another client may be creating it at this moment: then read what it made.
            info = await self.api(
                f"STREAM.CREATE.{name}", config, ok=(ERR_STREAM_NAME_IN_USE, ERR_SUBJECTS_OVERLAP)
            ) or await self.api(f"STREAM.INFO.{name}", None)
        assert info is not None
        return info

    # -- records ----------------------------------------------------------------------------

    def write(self, key: str, data: bytes, last: int | None) -> Request:
        """The request that writes a record: ``last`` is the revision it must replace (0: the
        key must have none; ``None``: unconditional). Its ack's sequence is the new revision,
        0 if the condition failed (see ``ack_seq``)."""
        headers = None if last is None else {EXPECTED_LAST: str(last)}
        return (self.kv_prefix + key, data, headers)

    def _get_item(self, key: str) -> Request:
        body = json.dumps({"last_by_subj": self.kv_prefix + key}).encode()
        if self.direct:
            return (f"$JS.API.DIRECT.GET.{self.kv_stream}", body, None)
        return (f"$JS.API.STREAM.MSG.GET.{self.kv_stream}", body, None)

    def _got(self, reply: Any) -> Got | None:
        """(record, tail, revision) from a get reply, or ``None`` if there is no record."""
        if self.direct:
            headers = reply.headers or {}
            status = headers.get("Status")
            if status == "404":
                return None
            if status:
                raise BackendError(f"NATS JetStream get failed: status {status}")
            if headers.get("KV-Operation") in ("DEL", "PURGE"):
                return None
            data, rev = reply.data, int(headers["Nats-Sequence"])
        else:
            result = api_result(reply, (ERR_NO_MESSAGE,))
            if result is None:
                return None
            message = result["message"]
            raw = message.get("hdrs")
            if raw and b"KV-Operation" in base64.b64decode(raw):
                return None
            data = base64.b64decode(message.get("data") or "")
            rev = int(message["seq"])
        try:
            rec, tail = decode(data)
        except ValueError:
            log.error("record %s in %s is not a sitq record", rev, self.kv_stream)
            return None
        return rec, tail, rev

    async def get_many(self, keys: Sequence[str]) -> list[Got | None]:
        """Read task records (one flush): (record, tail, revision), ``None`` where none."""
        replies = await self.many(self._get_item(k) for k in keys)
        return [self._got(r) for r in replies]

    async def read_meta(self, keys: Sequence[str]) -> list[Entry | None]:
        """Read sitq's own records (cron, lock, slots) with their revisions and server
        timestamps; ``None`` where a key has no record."""
        if not keys:
            return []
        out: list[Entry | None] = []
        for reply in await self.many(self._get_item(k) for k in keys):
            if self.direct:
                headers = reply.headers or {}
                status = headers.get("Status")
                if status == "404":
                    out.append(None)
                    continue
                if status:
                    raise BackendError(f"NATS JetStream get failed: status {status}")
                marker = headers.get("KV-Operation") in ("DEL", "PURGE")
                data, rev = bytes(reply.data), int(headers["Nats-Sequence"])
                stamp = parse_time(headers["Nats-Time-Stamp"])
            else:
                result = api_result(reply, (ERR_NO_MESSAGE,))
                if result is None:
                    out.append(None)
                    continue
                message = result["message"]
                raw = message.get("hdrs")
                marker = bool(raw and b"KV-Operation" in base64.b64decode(raw))
                data = base64.b64decode(message.get("data") or "")
                rev, stamp = int(message["seq"]), parse_time(message["time"])
            head: dict[str, Any] | None = None
            tail = b""
            if not marker:
                try:
                    head, tail = decode(data)
                except ValueError:
                    log.error("record %s in %s is not a sitq record", rev, self.kv_stream)
            out.append(Entry(head, tail, rev, stamp))
        return out

    async def get_by_seq(self, seq: int) -> float | None:
        """The server timestamp of one message of the bucket's stream."""
        if self.direct:
            body = json.dumps({"seq": seq}).encode()
            reply = await self.one(f"$JS.API.DIRECT.GET.{self.kv_stream}", body, None)
            stamp = (reply.headers or {}).get("Nats-Time-Stamp")
            return parse_time(stamp) if stamp else None
        # The message may be gone already (another client wrote the same key meanwhile): the
        # caller measures again, as it does after a direct get that found nothing.
        result = await self.api(
            f"STREAM.MSG.GET.{self.kv_stream}", {"seq": seq}, ok=(ERR_NO_MESSAGE,)
        )
        return parse_time(result["message"]["time"]) if result else None

    async def delete_seq(self, seq: int) -> bool:
        """Delete a record by its revision (a write just made); whether it was there."""
        result = await self.api(
            f"STREAM.MSG.DELETE.{self.kv_stream}",
            {"seq": seq, "no_erase": True},
            ok=(ERR_DELETE_NO_MESSAGE,),
        )
        return bool(result and result.get("success"))

    async def delete_rev(self, rev: int) -> bool:
        """Delete one revision of a record; ``False`` if it is no longer there (rewritten)."""
        result = await self.api(
            f"STREAM.MSG.DELETE.{self.kv_stream}",
            {"seq": rev, "no_erase": True},
            ok=(ERR_DELETE_NO_MESSAGE, ERR_NO_MESSAGE),
        )
        return bool(result and result.get("success"))

    async def delete_many(self, seqs: Sequence[int]) -> int:
        """Delete records by revision; one already rewritten (enqueued again) stays."""
        return sum(await self.delete_many_each(seqs))

    async def delete_many_each(self, seqs: Sequence[int]) -> list[bool]:
        """Delete records by revision; per revision, whether it was still there."""
        replies = await self.many(
            (
                f"$JS.API.STREAM.MSG.DELETE.{self.kv_stream}",
                json.dumps({"seq": seq, "no_erase": True}).encode(),
                None,
            )
            for seq in seqs
        )
        out = []
        for reply in replies:
            result = api_result(reply, (ERR_DELETE_NO_MESSAGE, ERR_NO_MESSAGE))
            out.append(bool(result and result.get("success")))
        return out
