"""The NATS JetStream backend, on nats-py: workers on many hosts share one NATS system.

It needs NATS Server 2.9 or later with JetStream enabled (``nats-server -js``) and uses only what
2.9 has: no per-message TTL, no server-side scheduling, no atomic batches.

Design:

* **Records.** The key-value bucket named after the backend's ``stream`` (stream ``KV_<stream>``,
  history 1, file storage) holds one record per task, keyed by the task id (an id that is not a
  valid key is base64url-encoded behind a ``=``). The record is the source of truth: state,
  attempts, retries, fencing token, lease, timestamps, and finally the result. Every change is a
  write conditioned on the revision it read (``Nats-Expected-Last-Subject-Sequence``), so of two
  workers acting on one task only one wins: claims, lease extensions, settlements and
  cancellations are compare-and-set on the record.
* **Delivery.** The stream ``<stream>`` (work-queue retention, file storage) carries one message
  per task on ``sitq.<stream>.q.<queue>.<priority>``, with the payload and the engine's options.
  Each (queue, priority) has a durable pull consumer. ``claim`` fetches from the consumers of its
  queues highest priority first, reads each task's record (a message from ``enqueue_many``
  carries the record's revision, so its first claim needs no read) and claims it by a conditioned
  write; so one worker slot runs tasks in strict priority order, then first in, first out. A
  message is acknowledged only once its task's final outcome is stored.
* **Leases are message timers.** With the claim (in the same flush) the worker naks the message
  with ``delay=lease``: JetStream then redelivers it when the lease runs out, unless the heartbeat
  (which rewrites the record's lease and naks again) or the final ack comes first. A worker that
  receives a message reads the record: a live lease (by the server's clock) is naked again until
  it ends; an expired one is taken over with a new fencing token. The fencing token is the record
  revision the claim replaced, unique for ever, so a result is stored only by the holder of the
  current claim. ``attempts`` lives in the record, not in JetStream's delivery count.
* **ETA.** A message whose task is not due is naked with ``delay=eta - now``; JetStream holds it
  and redelivers it at its ETA. Retries are naked the same way, releases with no delay. A delay
  is at most ``_MAX_NAK_DELAY`` (a day): a task due later comes back once a day, finds its record
  not due and is naked again, so any ETA sitq accepts (up to year 9999) waits without cost.
* **Two writes per enqueue.** Record and message cannot be written atomically in 2.9; the order
  makes a failure between them harmless: at worst a message without a record (dropped by the
  worker that gets it once it is ``_ORPHAN_GRACE`` old) or, for a generated id nobody has seen,
  a pending record without a message. An explicit ``task_id`` is always safe to enqueue again.
* **Expiry.** A finished record carries ``expires_at`` and is invisible once it has passed.
  Finishing also appends ``(key, revision, expires_at)`` to an expiry index,
  ``sitq.<stream>.x.<ttl class>``: tasks with the same ``result_ttl`` (to 10 s) expire in the order
  they finish, so ``purge_expired`` reads each class from its oldest entry and stops at the first
  one still alive. It deletes a record by its revision, which does nothing if the id has been
  enqueued again since.
* **Wake-ups.** Idle workers hold one long-polling pull request (``expires`` = the poll interval)
  per consumer, so a new task, a task reaching its ETA and a lease running out all reach a waiting
  worker at once. Result waiters subscribe to the record's subject (every write to the key is
  published there) and re-read the record when a write looks final.
* **sitq's own records** share the bucket under keys that start with ``_.`` (a task key never
  has a ``.``): ``_.cron.<name>`` per cron schedule plus ``_.crons``, the index of their names;
  ``_.lock.<name>`` per held lock; ``_.ck.<queue>.<key>`` per (queue, concurrency key), the
  list of its slot holders. Names are encoded as task ids are. Every change to them is a write
  conditioned on the revision read, and a delete removes one exact revision.
* **Locks.** A lock record holds its token and TTL; the TTL counts from the server's timestamp
  of the write that took or last extended the lock, judged against this client's estimate of
  the server's clock (the one leases use), so the holder's own clock never matters.
* **Concurrency keys.** A claim takes a keyed task's slot before it writes the task's record:
  it adds ``[task key, fencing token, lease until, owner]`` to the slots record, conditioned on
  the revision that showed fewer than the task's limit of other unexpired holders. A task whose
  key is full is naked with a back-off growing to ``_BLOCKED_MAX`` (never past the first
  holder's lease end) and parked in the client that saw it; a settle removes the holder and
  notifies ``sitq.<stream>.n.k.<queue>``, and each client hands as many parked messages of
  that key to its next claim. Heartbeats extend the holder first: a claim whose slot lapsed is
  lost. A holder whose task never started (a crash between the two writes) lapses at its
  lease end.
* Streams and consumers are created on ``connect()`` (and consumers when a queue or priority is
  first seen), idempotently: any number of workers may start at once.

The record format (field names, encoding, the changes each step makes) is in ``_records``, the
slots records of concurrency keys in ``_slots``, and the JetStream API's replies, ack subjects
and per-consumer state in ``_jetstream``; this module holds the connection and the steps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import inspect
import json
import logging
import math
import re
import secrets
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sitq.backends import require
from sitq.backends.base import Backend
from sitq.backends.nats._jetstream import (
    ERR_CONSUMER_NOT_FOUND,
    ERR_DELETE_NO_MESSAGE,
    ERR_NO_MESSAGE,
    ERR_STREAM_NAME_IN_USE,
    ERR_STREAM_NOT_FOUND,
    EXPECTED_LAST,
    NS,
    Consumer,
    ack_info,
    ack_seq,
    api_result,
    parse_time,
    stream_seq,
)
from sitq.backends.nats._records import (
    CANCEL_REQUESTED,
    CONCURRENCY_KEY,
    CONCURRENCY_LIMIT,
    CRON_INDEX,
    CRON_NAMES,
    CRON_TICK,
    ETA,
    EXPIRES_AT,
    FENCE,
    FINAL,
    GENERATION,
    INDEX_EXPIRES,
    INDEX_KEYS,
    LEASE_UNTIL,
    LOCK_TOKEN,
    LOCK_TTL,
    NAME,
    OPTIONS,
    QUEUE,
    RESULT_TTL,
    REVISION,
    STATE,
    TASK_ID,
    UNFINISHED,
    Entry,
    cancel_flagged,
    cancelled,
    checked,
    claim_of,
    cron_key,
    decode,
    encode,
    expired,
    expiry_class,
    finished,
    keyed,
    leased,
    lock_key,
    message_body,
    message_record,
    new_record,
    released,
    rescheduled,
    running,
    snapshot_of,
    split,
    task_key,
)
from sitq.backends.nats._slots import KeySlots, slot_key
from sitq.errors import BackendError, ConfigurationError, check_seconds
from sitq.models import (
    CancelOutcome,
    Claim,
    ClaimRef,
    CronRecord,
    Finish,
    LeaseState,
    NewTask,
    QueueStats,
    Reschedule,
    Settlement,
    TaskSnapshot,
)

log = logging.getLogger("sitq.nats")

_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ORPHAN_GRACE = 30.0
"""Seconds a message may wait for its record (enqueue writes both at once) before it is dropped."""
_RETURN_AFTER = 0.25
"""Seconds a message a long poll brought in may wait for a claim before it goes back."""
_PRIORITY_REFRESH = 10.0
_MAX_FETCH = 256
_MAX_NAK_DELAY = 86_400.0
"""Longest nak delay (seconds): a task due later is handed back once a day and naked again."""
_CAS_TRIES = 50
"""Attempts at a read-modify-write of one of sitq's own records before giving up."""
_BLOCKED_MAX = 1.0
"""Longest back-off (seconds) before a task whose concurrency key is full is looked at again."""
_MAX_PARKED = 1000
_CLOCK_STEP = 1.0
"""Seconds by which our clock must disagree with the steady clock to count as stepped."""
_steady = (
    functools.partial(time.clock_gettime, time.CLOCK_BOOTTIME)
    if hasattr(time, "CLOCK_BOOTTIME")
    else time.monotonic
)
"""A clock that no one sets, counting suspended time where the system has one (Linux)."""


@dataclass(slots=True)
class _Held:
    """A claim this backend handed out: the message to ack or nak, and the record as written."""

    reply: str | None
    rev: int
    rec: dict[str, Any]


@dataclass(slots=True)
class _Delivery:
    """A fetched message, parsed."""

    msg: Any
    head: dict[str, Any]
    payload: bytes
    key: str
    delivered: int
    stamp: float
    rec: dict[str, Any] | None = None
    rev: int = 0
    known: bool = False
    tries: int = 0
    problem: str | None = None
    """What was wrong with the record (repaired to be claimed and failed by the worker)."""


class NATSBackend(Backend):
    """Tasks in NATS JetStream: records in a key-value bucket, deliveries in a work-queue stream.

    ``servers`` is one URL or a list (``nats://user:pass@host:4222``, ``tls://...``). ``stream``
    names the stream and the bucket (and prefixes every subject and consumer), so two
    applications can share a server. ``replicas`` is the replication of the streams in a cluster
    (1, 3 or 5). ``ack_wait`` bounds how long a message fetched by a worker that died before
    claiming it stays hidden; leases themselves are per claim. Requires NATS Server 2.9+ with
    JetStream.

    TLS: a server that requires TLS is always reached over TLS, verified against the system's
    certificate authorities or ``tls_ca`` (a PEM file); ``tls_cert``/``tls_key`` present a client
    certificate. With a ``tls://`` server URL (or ``tls_ca``), a server that does not use TLS is
    refused instead of being used in plain text.
    """

    scheme = ("nats", "tls")

    def __init__(
        self,
        servers: str | Sequence[str] = ("nats://localhost:4222",),
        *,
        stream: str = "SITQ",
        replicas: int = 1,
        request_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        ack_wait: float = 30.0,
        name: str = "sitq",
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self._nats = require("nats", "nats", "NATSBackend")
        if isinstance(servers, str):
            servers = [s.strip() for s in servers.split(",") if s.strip()]
        servers = list(servers)
        if not servers or not all(isinstance(s, str) and "://" in s for s in servers):
            raise ConfigurationError(
                f"servers must be NATS URLs such as nats://localhost:4222, not {servers!r}"
            )
        if not isinstance(stream, str) or not _STREAM_NAME.fullmatch(stream):
            raise ConfigurationError(
                f"stream={stream!r} is not valid: use 1-64 letters, digits, '_' or '-'"
            )
        if isinstance(replicas, bool) or replicas not in (1, 2, 3, 4, 5):
            raise ConfigurationError(f"replicas must be 1 to 5 (usually 1 or 3), not {replicas!r}")
        for label, value in (
            ("request_timeout", request_timeout),
            ("connect_timeout", connect_timeout),
            ("ack_wait", ack_wait),
        ):
            check_seconds(label, value, allow_inf=True)
        self.servers = servers
        self.stream = stream
        self.replicas = replicas
        self.request_timeout = float(request_timeout)
        self.connect_timeout = float(connect_timeout)
        self.ack_wait = float(ack_wait)
        self.client_name = name
        self.tls_ca, self.tls_cert, self.tls_key = tls_ca, tls_cert, tls_key
        self._tls_required = bool(tls_ca or tls_cert) or any(
            s.lower().startswith("tls://") for s in servers
        )
        self._kv_stream = f"KV_{stream}"
        self._kv_prefix = f"$KV.{stream}."
        self._subject_prefix = f"sitq.{stream}"
        self._nc: Any = None
        self._closing = False
        self._last_error = ""
        self._replies: dict[str, asyncio.Future[Any]] = {}
        self._reply_prefix = ""
        self._token = 0
        self._direct = True
        self._offset = 0.0
        self._clock_mark = (time.time(), _steady())
        self._remeasure: asyncio.Future[None] | None = None
        self._consumers: dict[str, Consumer] = {}
        self._priorities: dict[str, set[int]] = {}
        self._refreshed: dict[str, float] = {}
        self._stale_priorities = False
        self._announced: dict[tuple[str, int], float] = {}
        self._held: dict[tuple[str, int], _Held] = {}
        self._held_fence: dict[str, int] = {}
        self._unindexed: dict[str, list[list[Any]]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._generation_prefix = secrets.token_hex(4)
        self._generations = 0
        self._work = asyncio.Event()
        self._subs: list[Any] = []
        self._owner = secrets.token_hex(6)
        # Messages of tasks whose concurrency key was full, by (queue, key) then stream
        # sequence: (message, monotonic time its nak delay ends). A freed slot brings them back.
        self._parked: dict[tuple[str, str], dict[int, tuple[Any, float]]] = {}

    @classmethod
    def from_url(cls, url: str) -> NATSBackend:
        """A backend from ``nats://host:4222?stream=APP1&replicas=3``.

        Several servers: a repeated ``server=`` parameter
        (``nats://h1:4222?server=nats://h2:4222&server=nats://h3:4222``), or comma-separated hosts
        (``nats://h1,h2,h3:4222``; ``backend_from_url`` accepts a port only on the last one).
        Other parameters: ``request_timeout``, ``connect_timeout``, ``ack_wait`` (seconds),
        ``name`` (the client name the server shows).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("nats", "tls"):
            raise ConfigurationError(f"not a nats:// or tls:// URL: {_redact(url)}")
        netloc = parts.netloc
        auth = ""
        if "@" in netloc:
            auth, _, netloc = netloc.rpartition("@")
            auth += "@"
        servers = [f"{scheme}://{auth}{host.strip()}" for host in netloc.split(",") if host.strip()]
        options: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "server":
                servers.append(value if "://" in value else f"{scheme}://{value}")
            elif key in ("stream", "name", "tls_ca", "tls_cert", "tls_key"):
                options[key] = value
            elif key == "replicas":
                try:
                    options[key] = int(value)
                except ValueError:
                    raise ConfigurationError(
                        f"replicas must be an integer, not {value!r}"
                    ) from None
            elif key in ("request_timeout", "connect_timeout", "ack_wait"):
                try:
                    options[key] = float(value)
                except ValueError:
                    raise ConfigurationError(f"{key} must be a number, not {value!r}") from None
            else:
                raise ConfigurationError(
                    f"unknown option {key!r} in {_redact(url)}: NATS URLs take stream, "
                    "replicas, server, request_timeout, connect_timeout, ack_wait, name, tls_ca, "
                    "tls_cert and tls_key"
                )
        if not servers:
            servers = ["nats://localhost:4222"]
        return cls(servers, **options)

    def _tls_context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"NATS TLS files cannot be loaded: {exc}") from exc
        return context

    def describe(self) -> str:
        """The servers and the stream, without credentials."""
        return f"{','.join(_redact(s) for s in self.servers)} (stream {self.stream})"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""
        return self._nc is not None

    async def connect(self) -> None:
        """Connect, check JetStream, and create the stream and the bucket if they are missing."""
        if self._nc is not None:
            return
        self._closing = False
        self._work = asyncio.Event()
        self._last_error = ""
        options: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            # Every subject sitq builds is made of validated parts (nats-py 2.10+).
            if "skip_subject_validation" in inspect.signature(self._nats.NATS.connect).parameters:
                options["skip_subject_validation"] = True
        if self.tls_ca or self.tls_cert:
            options["tls"] = self._tls_context()
        try:
            # Reconnect for ever once connected (workers ride out a server restart); the first
            # connection gets connect_timeout in all.
            nc = await asyncio.wait_for(
                self._nats.connect(
                    servers=self.servers,
                    name=self.client_name,
                    connect_timeout=max(1, math.ceil(self.connect_timeout)),
                    reconnect_time_wait=0.5,
                    max_reconnect_attempts=-1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    **options,
                ),
                self.connect_timeout,
            )
        except Exception as exc:
            reason = self._last_error or f"{type(exc).__name__}: {exc}"
            raise BackendError(f"cannot connect to NATS at {self.describe()}: {reason}") from exc
        if self._tls_required and not getattr(nc, "_server_info", {}).get("tls_required"):
            with contextlib.suppress(Exception):
                await nc.close()
            raise BackendError(
                f"the NATS server at {self.describe()} does not use TLS, but TLS was asked for "
                "(a tls:// URL or tls_ca): refusing to go on in plain text"
            )
        self._nc = nc
        try:
            await self._setup(nc)
        except BaseException:
            self._nc = None
            with contextlib.suppress(Exception):
                await nc.close()
            raise

    async def _setup(self, nc: Any) -> None:
        version = nc.connected_server_version
        if (version.major, version.minor) < (2, 9):
            raise BackendError(
                f"NATSBackend needs NATS Server 2.9 or later, but {self.describe()} runs "
                f"{version}: upgrade the server"
            )
        self._reply_prefix = nc.new_inbox() + "."
        self._subs = [await nc.subscribe(self._reply_prefix + "*", cb=self._on_reply)]
        try:
            await self._api("INFO", None)
        except BackendError as exc:
            raise BackendError(
                f"JetStream is not available at {self.describe()} ({exc}): start nats-server "
                "with -js (sitq needs NATS Server 2.9+ with JetStream)"
            ) from exc
        work = await self._ensure_stream(
            self.stream,
            {
                "name": self.stream,
                "subjects": [f"{self._subject_prefix}.q.>", f"{self._subject_prefix}.x.>"],
                "retention": "workqueue",
                "storage": "file",
                "num_replicas": self.replicas,
                "discard": "old",
                "max_msgs": -1,
                "max_bytes": -1,
                "max_age": 0,
                "max_msg_size": -1,
                "duplicate_window": 120 * NS,
            },
        )
        kv = await self._ensure_stream(
            self._kv_stream,
            {
                "name": self._kv_stream,
                "subjects": [f"{self._kv_prefix}>"],
                "retention": "limits",
                "storage": "file",
                "num_replicas": self.replicas,
                "max_msgs_per_subject": 1,
                "discard": "new",
                "allow_rollup_hdrs": True,
                "deny_delete": False,
                "deny_purge": False,
                "allow_direct": True,
                "max_msgs": -1,
                "max_bytes": -1,
                "max_age": 0,
                "max_msg_size": -1,
                "duplicate_window": 120 * NS,
            },
        )
        subjects = set(work["config"].get("subjects") or ())
        if work["config"].get("retention") != "workqueue" or f"{self._subject_prefix}.q.>" not in (
            subjects
        ):
            raise BackendError(
                f"stream {self.stream!r} exists but was not made by sitq (not a work-queue stream "
                f"on {self._subject_prefix}.q.>): choose another stream name"
            )
        # Followers of a replicated stream may answer direct gets from behind the leader; read
        # through the leader there, so that a reader sees every write that was acknowledged.
        config = kv["config"]
        self._direct = bool(config.get("allow_direct")) and config.get("num_replicas", 1) == 1
        self._subs.append(
            await nc.subscribe(f"{self._subject_prefix}.n.>", cb=self._on_notification)
        )
        await self._measure_clock()

    async def _ensure_stream(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        info = await self._api(f"STREAM.INFO.{name}", None, ok=(ERR_STREAM_NOT_FOUND,))
        if info is None:
            info = await self._api(
                f"STREAM.CREATE.{name}", config, ok=(ERR_STREAM_NAME_IN_USE,)
            ) or await self._api(f"STREAM.INFO.{name}", None)
        assert info is not None
        return info

    async def _measure_clock(self) -> None:
        """Estimate the server clock's offset from ours (leases use the server's clock)."""
        best: tuple[float, float] | None = None
        for _ in range(3):
            t0 = time.time()
            rev = ack_seq(await self._one(self._kv_prefix + "_.clock", b"", None))
            t1 = time.time()
            got = await self._get_by_seq(rev)
            if got is None:
                continue
            offset = got - (t0 + t1) / 2
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, offset)
        if best is not None:
            rtt, offset = best
            # Within the measurement's own uncertainty the clocks agree: keep ours exactly.
            self._offset = offset if abs(offset) > rtt + 0.005 else 0.0
            self._clock_mark = (time.time(), _steady())
            if self._offset:
                log.info("NATS server clock is %.3f s from ours; leases use the server's", offset)

    async def _measure_clock_again(self) -> None:
        try:
            await self._measure_clock()
        except Exception as exc:
            log.warning("measuring the NATS server's clock again failed: %s", exc)

    def _now(self) -> float:
        now = time.time()
        # Our clock may have been stepped since the offset was measured (NTP, by hand); the
        # server's was not. A step shows against the steady clock: take it out at once, and
        # measure the offset again (which also covers a steady clock that stood still).
        wall, steady = self._clock_mark
        step = (_steady() - steady) - (now - wall)
        if abs(step) > _CLOCK_STEP:
            self._offset += step
            self._clock_mark = (now, _steady())
            log.warning("our clock jumped by %.3f s; measuring the NATS server's again", -step)
            if self._nc is not None and (self._remeasure is None or self._remeasure.done()):
                self._remeasure = asyncio.ensure_future(self._measure_clock_again())
        return now + self._offset

    async def close(self) -> None:
        """Give back prefetched messages, close the connection and wake every waiter."""
        if self._nc is not None and self._unindexed:
            with contextlib.suppress(Exception):
                await self._index({})
        nc, self._nc = self._nc, None
        self._closing = True
        self._work.set()
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(BackendError("NATSBackend was closed"))
        self._replies.clear()
        if nc is None:
            return
        for consumer in self._consumers.values():
            while consumer.buffer:
                msg, _ = consumer.buffer.popleft()
                with contextlib.suppress(Exception):
                    await nc.publish(msg.reply, b"-NAK")
            waiter = consumer.fetch_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._consumers.clear()
        self._priorities.clear()
        self._refreshed.clear()
        self._held.clear()
        self._held_fence.clear()
        self._parked.clear()
        self._subs = []
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 10)

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.debug("NATS connection error: %s", self._last_error)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        log.warning("NATS connection lost (%s); reconnecting", self._last_error or "disconnected")
        error = BackendError(f"NATS connection lost: {self._last_error or 'disconnected'}")
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(error)
        self._replies.clear()
        for consumer in self._consumers.values():
            consumer.poll_until = 0.0
            waiter = consumer.fetch_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        self._work.set()

    async def _on_reconnected(self) -> None:
        log.warning("NATS connection re-established")
        self._last_error = ""
        self._stale_priorities = True
        self._work.set()

    # -- plumbing ---------------------------------------------------------------------------

    def _client(self) -> Any:
        nc = self._nc
        if nc is None:
            raise BackendError("NATSBackend is not connected: call `await backend.connect()`")
        if not nc.is_connected:
            raise BackendError(
                f"NATS connection lost ({self._last_error or 'reconnecting'}); the client is "
                "reconnecting"
            )
        return nc

    async def _on_reply(self, msg: Any) -> None:
        fut = self._replies.pop(msg.subject[len(self._reply_prefix) :], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _publish(self, subject: str, payload: bytes = b"", **kwargs: Any) -> None:
        """Fire and forget (acks, naks, notifications)."""
        nc = self._nc
        if nc is None:
            return
        try:
            await nc.publish(subject, payload, **kwargs)
        except Exception as exc:
            log.debug("NATS publish to %s failed: %s", subject, exc)

    async def _send(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Any:
        """Publish a request; return the future of its reply."""
        nc = self._client()
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

    async def _many(
        self, items: Iterable[tuple[str, bytes, dict[str, str] | None]], timeout: float = 0.0
    ) -> list[Any]:
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
                        BackendError(
                            f"NATS request timed out after {limit:g} s ({self.describe()})"
                        )
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

    async def _one(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> Any:
        return (await self._many([(subject, payload, headers)]))[0]

    async def _api(
        self, op: str, body: dict[str, Any] | None, *, ok: tuple[int, ...] = ()
    ) -> dict[str, Any] | None:
        """A JetStream API call; ``None`` for the error codes in ``ok``."""
        payload = b"" if body is None else json.dumps(body).encode()
        reply = await self._one(f"$JS.API.{op}", payload, None)
        return api_result(reply, ok)

    def _write(self, key: str, data: bytes, last: int | None) -> tuple[str, bytes, Any]:
        headers = None if last is None else {EXPECTED_LAST: str(last)}
        return (self._kv_prefix + key, data, headers)

    def _get_item(self, key: str) -> tuple[str, bytes, None]:
        body = json.dumps({"last_by_subj": self._kv_prefix + key}).encode()
        if self._direct:
            return (f"$JS.API.DIRECT.GET.{self._kv_stream}", body, None)
        return (f"$JS.API.STREAM.MSG.GET.{self._kv_stream}", body, None)

    def _got(self, reply: Any) -> tuple[dict[str, Any], bytes, int] | None:
        """(record, tail, revision) from a get reply, or ``None`` if there is no record."""
        if self._direct:
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
            log.error("record %s in %s is not a sitq record", rev, self._kv_stream)
            return None
        return rec, tail, rev

    async def _get_many(
        self, keys: Sequence[str]
    ) -> list[tuple[dict[str, Any], bytes, int] | None]:
        replies = await self._many(self._get_item(k) for k in keys)
        return [self._got(r) for r in replies]

    async def _read_meta(self, keys: Sequence[str]) -> list[Entry | None]:
        """Read sitq's own records (cron, lock, slots) with their revisions and server
        timestamps; ``None`` where a key has no record."""
        if not keys:
            return []
        out: list[Entry | None] = []
        for reply in await self._many(self._get_item(k) for k in keys):
            if self._direct:
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
                    log.error("record %s in %s is not a sitq record", rev, self._kv_stream)
            out.append(Entry(head, tail, rev, stamp))
        return out

    async def _get_by_seq(self, seq: int) -> float | None:
        """The server timestamp of one message of the bucket's stream."""
        if self._direct:
            body = json.dumps({"seq": seq}).encode()
            reply = await self._one(f"$JS.API.DIRECT.GET.{self._kv_stream}", body, None)
            stamp = (reply.headers or {}).get("Nats-Time-Stamp")
            return parse_time(stamp) if stamp else None
        # The message may be gone already (another client wrote the same key meanwhile): the
        # caller measures again, as it does after a direct get that found nothing.
        result = await self._api(
            f"STREAM.MSG.GET.{self._kv_stream}", {"seq": seq}, ok=(ERR_NO_MESSAGE,)
        )
        return parse_time(result["message"]["time"]) if result else None

    # -- consumers and priorities -----------------------------------------------------------

    def _consumer_name(self, queue: str, priority: int) -> str:
        sign = "m" if priority < 0 else "p"
        return f"q_{queue}_{sign}{abs(priority)}"

    async def _consumer(self, name: str, subject: str) -> Consumer:
        consumer = self._consumers.get(name)
        if consumer is not None:
            return consumer
        config = {
            "durable_name": name,
            "deliver_policy": "all",
            "ack_policy": "explicit",
            "ack_wait": int(self.ack_wait * NS),
            "max_deliver": -1,
            "filter_subject": subject,
            "replay_policy": "instant",
            "max_ack_pending": -1,
        }
        body = {"stream_name": self.stream, "config": config}
        try:
            await self._api(f"CONSUMER.DURABLE.CREATE.{self.stream}.{name}", body)
        except BackendError as exc:
            # Created meanwhile with other settings (another sitq version): use it as it is.
            if (
                await self._api(
                    f"CONSUMER.INFO.{self.stream}.{name}", None, ok=(ERR_CONSUMER_NOT_FOUND,)
                )
                is None
            ):
                raise exc
        consumer = self._consumers.get(name)
        if consumer is not None:  # created concurrently by another call
            return consumer
        nc = self._client()
        consumer = Consumer(name, subject, f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{name}")
        consumer.fetch_inbox = nc.new_inbox()
        consumer.poll_inbox = nc.new_inbox()

        async def on_fetch(msg: Any) -> None:
            self._on_delivery(consumer, msg, poll=False)

        async def on_poll(msg: Any) -> None:
            self._on_delivery(consumer, msg, poll=True)

        consumer.subs = [
            await nc.subscribe(consumer.fetch_inbox, cb=on_fetch),
            await nc.subscribe(consumer.poll_inbox, cb=on_poll),
        ]
        self._consumers[name] = consumer
        return consumer

    def _on_delivery(self, consumer: Consumer, msg: Any, *, poll: bool) -> None:
        status = msg.headers.get("Status") if msg.headers else None
        if poll:
            consumer.poll_until = 0.0
        if status:
            if status == "100":  # idle heartbeat
                return
            if not poll:
                waiter = consumer.fetch_waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            return
        if poll:
            self._buffer(consumer, msg)
            self._work.set()
        else:
            self._buffer(consumer, msg)
            consumer.fetch_got += 1
            waiter = consumer.fetch_waiter
            if (
                waiter is not None
                and not waiter.done()
                and consumer.fetch_got >= consumer.fetch_need
            ):
                waiter.set_result(None)

    def _buffer(self, consumer: Consumer, msg: Any) -> None:
        """Keep a message for the next claim; it goes back if no claim takes it soon."""
        consumer.buffer.append((msg, time.monotonic()))
        if not consumer.return_scheduled:
            consumer.return_scheduled = True
            asyncio.get_running_loop().call_later(_RETURN_AFTER * 1.5, self._return_stale, consumer)

    def _return_stale(self, consumer: Consumer) -> None:
        """Give back messages a long poll brought in that no claim took: another worker may
        be free while this one is busy."""
        consumer.return_scheduled = False
        limit = time.monotonic() - _RETURN_AFTER
        stale = []
        while consumer.fetch_waiter is None and consumer.buffer and consumer.buffer[0][1] <= limit:
            stale.append(consumer.buffer.popleft()[0])
        for msg in stale:
            self._spawn(self._publish(msg.reply, b"-NAK"))
        if consumer.buffer:
            consumer.return_scheduled = True
            asyncio.get_running_loop().call_later(_RETURN_AFTER, self._return_stale, consumer)

    async def _on_notification(self, msg: Any) -> None:
        # sitq.<stream>.n.p.<queue>: a priority is in use on a queue;
        # sitq.<stream>.n.k.<queue>: a slot of the concurrency key in the payload was freed.
        tokens = msg.subject.split(".")
        queue = tokens[-1]
        if len(tokens) >= 2 and tokens[-2] == "k":
            with contextlib.suppress(UnicodeDecodeError, ValueError):
                count, _, ck = bytes(msg.data).decode().partition(" ")
                self._unpark(queue, ck, int(count))
            return
        try:
            priority = int(msg.data)
        except ValueError:
            return
        known = self._priorities.get(queue)
        if known is not None and priority not in known:
            known.add(priority)
            self._work.set()

    async def _queue_consumers(
        self, queues: Sequence[str], *, refresh_after: float
    ) -> list[tuple[int, int, Consumer]]:
        """The consumers of ``queues`` as (priority, queue index, consumer), best first."""
        now = time.monotonic()
        stale = [
            q
            for q in queues
            if self._stale_priorities or now - self._refreshed.get(q, -math.inf) > refresh_after
        ]
        if stale:
            await self._refresh_priorities(stale)
        out = []
        for index, queue in enumerate(queues):
            for priority in self._priorities.get(queue, ()):
                name = self._consumer_name(queue, priority)
                subject = f"{self._subject_prefix}.q.{queue}.{priority}"
                out.append((priority, index, await self._consumer(name, subject)))
        out.sort(key=lambda item: (-item[0], item[1]))
        return out

    async def _refresh_priorities(self, queues: Sequence[str]) -> None:
        """Learn which priorities have messages, from the stream's subject counts."""
        self._stale_priorities = False
        info = await self._api(
            f"STREAM.INFO.{self.stream}", {"subjects_filter": f"{self._subject_prefix}.q.>"}
        )
        subjects = ((info or {}).get("state") or {}).get("subjects") or {}
        found: dict[str, set[int]] = {}
        for subject in subjects:
            parts = subject.rsplit(".", 2)
            with contextlib.suppress(ValueError, IndexError):
                found.setdefault(parts[1], set()).add(int(parts[2]))
        now = time.monotonic()
        for queue in queues:
            known = self._priorities.setdefault(queue, {0})
            known |= found.get(queue, set())
            self._refreshed[queue] = now

    # -- enqueue ----------------------------------------------------------------------------

    def _new_record(self, task: NewTask, now: float) -> bytes:
        """The first record of a task, encoded."""
        enqueued = now if self._offset else task.enqueued_at
        eta = enqueued if task.eta <= task.enqueued_at else task.eta
        return encode(new_record(task, enqueued, eta, self._generation()))

    def _generation(self) -> str:
        """A token unique to one life of a task id (its record and its message share it)."""
        self._generations += 1
        return f"{self._generation_prefix}{self._generations:x}"

    def _message(self, task: NewTask, record: bytes, rev: int) -> tuple[str, bytes, None]:
        """The work message of a task: its first record, its options (and the record's
        revision when known), then the payload."""
        subject = f"{self._subject_prefix}.q.{task.queue}.{task.priority}"
        return (subject, message_body(task, record, rev), None)

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store records and publish messages; an id still known is left alone.

        NATS 2.9 cannot write two messages atomically, so the order of the two writes is
        chosen so that a failure between them leaves at worst a message without a record
        (dropped by the worker that receives it) and, for generated ids only, a record that
        nobody can know the id of. An explicit id is therefore always safe to enqueue again
        after an error.
        """
        if not tasks:
            return []
        nc = self._client()
        for task in tasks:
            if len(task.payload) + 2048 > nc.max_payload:
                raise BackendError(
                    f"task {task.id!r}: its payload of {len(task.payload)} bytes exceeds the "
                    f"NATS server's max_payload ({nc.max_payload} bytes)"
                )
        now = self._now()
        built = [self._new_record(t, now) for t in tasks]
        stored = [False] * len(tasks)
        fresh = [i for i, t in enumerate(tasks) if t.fresh_id]
        explicit = [i for i, t in enumerate(tasks) if not t.fresh_id]
        if len(fresh) == 1 and not explicit:
            await self._enqueue_one(tasks[fresh[0]], built[fresh[0]])
            stored[fresh[0]] = True
        elif fresh:
            await self._enqueue_fresh(tasks, built, fresh, stored)
        if explicit:
            await self._enqueue_explicit(tasks, built, explicit, stored, now)
        await self._announce(tasks)
        return stored

    async def _enqueue_one(self, task: NewTask, record: bytes) -> None:
        """Record and message in one round trip. A message that arrives before its record
        waits for it (see ``_decide``); a record whose message failed is removed again."""
        write, publish = await self._many(
            [self._write(task_key(task.id), record, 0), self._message(task, record, 0)]
        )
        rev = ack_seq(write)
        try:
            ack_seq(publish)
        except BackendError:
            if rev:
                await self._delete_seq(rev)
            raise
        if not rev:
            raise BackendError(f"task id {task.id!r} exists already although it was generated")

    async def _enqueue_fresh(
        self, tasks: Sequence[NewTask], built: list[bytes], indexes: list[int], stored: list[bool]
    ) -> None:
        """Records first, then the messages, which carry each record's revision so that a
        worker claims without reading the record first. (A generated id is new: its record
        needs no check that the key is free.)"""
        acks = await self._many(self._write(task_key(tasks[i].id), built[i], None) for i in indexes)
        revs = [ack_seq(a) for a in acks]
        ok = [(i, rev) for i, rev in zip(indexes, revs, strict=True) if rev]
        try:
            published = await self._many(self._message(tasks[i], built[i], rev) for i, rev in ok)
            for reply in published:
                ack_seq(reply)
        except BackendError:
            await asyncio.gather(*(self._delete_seq(rev) for _, rev in ok), return_exceptions=True)
            raise
        for i, _ in ok:
            stored[i] = True

    async def _enqueue_explicit(
        self,
        tasks: Sequence[NewTask],
        built: list[bytes],
        indexes: list[int],
        stored: list[bool],
        now: float,
    ) -> None:
        """Ids the caller chose: skip those still known; publish the messages, then create
        (or replace an expired) record. A message whose record lost a race is dropped."""
        targets: list[tuple[int, int]] = []  # (task index, revision the write expects)
        found = await self._get_many([task_key(tasks[i].id) for i in indexes])
        for i, got in zip(indexes, found, strict=True):
            if got is None:
                targets.append((i, 0))
            elif expired(got[0], now):
                targets.append((i, got[2]))
        if not targets:
            return
        for reply in await self._many(self._message(tasks[i], built[i], 0) for i, _ in targets):
            ack_seq(reply)
        acks = await self._many(
            self._write(task_key(tasks[i].id), built[i], last) for i, last in targets
        )
        for (i, _), ack in zip(targets, acks, strict=True):
            stored[i] = bool(ack_seq(ack))

    async def _announce(self, tasks: Sequence[NewTask]) -> None:
        """Tell workers (at most once a second per queue and priority) that a priority is in use."""
        now = time.monotonic()
        for queue, priority in {(t.queue, t.priority) for t in tasks}:
            self._priorities.setdefault(queue, {0}).add(priority)
            if now - self._announced.get((queue, priority), -math.inf) >= 1.0:
                self._announced[(queue, priority)] = now
                await self._publish(f"{self._subject_prefix}.n.p.{queue}", str(priority).encode())

    async def _delete_seq(self, seq: int) -> bool:
        result = await self._api(
            f"STREAM.MSG.DELETE.{self._kv_stream}",
            {"seq": seq, "no_erase": True},
            ok=(ERR_DELETE_NO_MESSAGE,),
        )
        return bool(result and result.get("success"))

    # -- claim ------------------------------------------------------------------------------

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Fetch from the queues' consumers highest priority first; claim each due task by a
        conditioned write of its record."""
        if limit <= 0:
            return []
        consumers = await self._queue_consumers(queues, refresh_after=_PRIORITY_REFRESH)
        claims: list[Claim] = []
        for _, _, consumer in consumers:
            batch = limit - len(claims)
            while len(claims) < limit:
                need = limit - len(claims)
                msgs, more = await self._take(consumer, min(max(need, batch), _MAX_FETCH))
                if msgs:
                    before = len(claims)
                    claims += await self._claim_messages(msgs, need, worker_id, lease)
                    if len(claims) - before < len(msgs):
                        batch = min(batch * 2, _MAX_FETCH)  # skipped some: read further at once
                if more is None:
                    # A long poll (or a freed concurrency slot) brought these in: claim them
                    # now rather than fetch first, and stop here if they all went (this
                    # consumer may have more; the next round fetches). Otherwise fetch what
                    # stands behind the ones that could not go.
                    if len(claims) - before >= len(msgs):
                        return claims
                    continue
                if not more:
                    break
            if len(claims) >= limit:
                break
        return claims

    async def _take(self, consumer: Consumer, want: int) -> tuple[list[Any], bool | None]:
        """Up to ``want`` messages, and whether the consumer may have more to deliver now
        (``None``: taken from what a long poll brought in, nothing was fetched).

        Nothing is fetched while a long poll is out on the consumer: it would have been
        answered if the consumer had a message to deliver.
        """
        async with consumer.lock:
            out = [consumer.buffer.popleft()[0] for _ in range(min(want, len(consumer.buffer)))]
            if out:
                return out, None
            if consumer.poll_until > time.monotonic():
                return out, False
            nc = self._client()
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[None] = loop.create_future()
            consumer.fetch_waiter = waiter
            consumer.fetch_need = want
            consumer.fetch_got = 0
            try:
                await nc.publish(
                    consumer.next_subject,
                    json.dumps({"batch": want, "no_wait": True}).encode(),
                    reply=consumer.fetch_inbox,
                )
                await asyncio.wait_for(waiter, self.request_timeout)
            except TimeoutError:
                raise BackendError(
                    f"NATS: no answer to a fetch from consumer {consumer.name} within "
                    f"{self.request_timeout:g} s"
                ) from None
            except BackendError:
                raise
            except Exception as exc:
                raise BackendError(f"NATS: {type(exc).__name__}: {exc}") from exc
            finally:
                consumer.fetch_waiter = None
            while consumer.buffer and len(out) < want:
                out.append(consumer.buffer.popleft()[0])
            return out, len(out) >= want

    def _parse(self, msg: Any) -> _Delivery | None:
        try:
            head, payload = decode(msg.data)
            key = task_key(str(head[TASK_ID]))
        except (ValueError, KeyError, TypeError):
            log.error("dropping a message on %s that is not a sitq task", msg.subject)
            return None
        delivered, stamp = ack_info(msg.reply)
        return _Delivery(msg, head, payload, key, delivered, stamp)

    async def _claim_messages(
        self, msgs: list[Any], need: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Claim what is due among fetched messages (at most ``need``); ack or nak the rest."""
        claims: list[Claim] = []
        try:
            return await self._claim_round(msgs, need, worker_id, lease, claims)
        except BaseException:
            # Give back what was not handed out rather than leave it for the ack wait (a nak
            # of a message already acked or timed is harmless: its record decides again).
            handed = {c.task_id for c in claims}
            for msg in msgs:
                d = self._parse(msg)
                if d is None or str(d.head.get(TASK_ID)) not in handed:
                    await self._publish(msg.reply, b"-NAK")
            raise

    async def _claim_round(
        self, msgs: list[Any], need: int, worker_id: str, lease: float, claims: list[Claim]
    ) -> list[Claim]:
        deliveries: list[_Delivery] = []
        admitted: dict[str, set[tuple[str, int]]] = {}  # slots taken: record key -> claims
        for msg in msgs:
            d = self._parse(msg)
            if d is None:
                await self._publish(msg.reply, b"+TERM")
            else:
                deliveries.append(d)
        todo = deliveries
        for _ in range(4):
            if not todo:
                break
            now = self._now()
            # A first delivery of a message that carries its record's revision needs no read:
            # the record is still the one enqueue wrote unless something changed it, and then
            # the conditioned write fails and we read it.
            unknown = [
                d
                for d in todo
                if not d.known
                and not (d.delivered == 1 and type(d.head.get(REVISION)) is int and d.tries == 0)
            ]
            if unknown:
                for d, got in zip(
                    unknown, await self._get_many([d.key for d in unknown]), strict=True
                ):
                    d.known = True
                    d.rec, d.rev = (got[0], got[2]) if got is not None else (None, 0)
            due: list[_Delivery] = []
            for d in todo:
                if not d.known:
                    d.rec, d.rev = message_record(d.head), int(d.head[REVISION])
                if d.rec is not None:
                    d.rec, d.problem = checked(d.rec, d.head, now)
                    if d.rec is None:
                        log.error("task record %s cannot be read (%s); skipped", d.key, d.problem)
                        await self._publish(d.msg.reply, b"+TERM")
                        continue
                if await self._decide(d, now):
                    due.append(d)
            chosen = await self._choose(due, need - len(claims), now, lease, admitted)
            writes = [(d, self._running(d, now, worker_id, lease)) for d in chosen]
            if not writes:
                todo = []  # each went back already, with its own delay
                break
            if abs(lease - self.ack_wait) > 0.5:
                # The lease's timer: JetStream redelivers the message when the lease ends. It
                # goes out in the same flush as (and before) the claim itself, so a worker that
                # stops right after claiming still loses the task after its lease. (When the two
                # are equal the ack wait, counted from the delivery, already does this.) A claim
                # that then fails sets the message's timer again below.
                for d, _ in writes:
                    await self._nak(d.msg.reply, lease)
            acks = await self._many(self._write(d.key, encode(rec), d.rev) for d, rec in writes)
            todo = []
            for (d, rec), ack in zip(writes, acks, strict=True):
                rev = ack_seq(ack)
                if not rev:
                    d.known = False
                    d.tries += 1
                    todo.append(d)
                    continue
                claims.append(self._hand_out(d, rec, rev))
        for d in todo:  # lost every race for it: let it come back
            await self._publish(d.msg.reply, b"-NAK")
        if admitted:
            # Slots taken for tasks that another worker claimed first go back at once.
            claimed = {(task_key(c.task_id), c.fencing_token) for c in claims}
            await self._free_slots({k: v - claimed for k, v in admitted.items()}, own=True)
        return claims

    async def _choose(
        self,
        due: list[_Delivery],
        room: int,
        now: float,
        lease: float,
        admitted: dict[str, set[tuple[str, int]]],
    ) -> list[_Delivery]:
        """The due deliveries to claim, in order: at most ``room``, and a task with a
        concurrency key only if it got a slot (taken here, before its claim is written). The
        others go back: those beyond ``room`` at once, those whose key is full after a delay."""
        if not any(keyed(d.rec) for d in due):
            for d in due[room:]:
                await self._publish(d.msg.reply, b"-NAK")
            return due[:room]
        keys = list(dict.fromkeys(slot_key(d.rec) for d in due if d.rec and keyed(d.rec)))
        slots = {
            k: KeySlots.read(e) for k, e in zip(keys, await self._read_meta(keys), strict=True)
        }
        chosen: list[_Delivery] = []
        groups: dict[str, list[_Delivery]] = {}
        for d in due:
            assert d.rec is not None
            if len(chosen) >= room:
                await self._publish(d.msg.reply, b"-NAK")
                continue
            if keyed(d.rec):
                key = slot_key(d.rec)
                if not self._admit(slots[key], d, now, lease):
                    await self._block(d, slots[key], now)
                    continue
                groups.setdefault(key, []).append(d)
            chosen.append(d)
        if not groups:
            return chosen
        kept = await self._take_slots(groups, slots, now, lease)
        for key, ds in kept.items():
            admitted.setdefault(key, set()).update((d.key, d.rev) for d in ds)
        taken = {id(d) for ds in kept.values() for d in ds}
        return [d for d in chosen if not keyed(d.rec) or id(d) in taken]

    def _admit(self, slots: KeySlots, d: _Delivery, now: float, lease: float) -> bool:
        assert d.rec is not None
        return slots.admit(
            d.key, d.rev, now + lease, self._owner, int(d.rec[CONCURRENCY_LIMIT]), now
        )

    async def _take_slots(
        self,
        groups: dict[str, list[_Delivery]],
        slots: dict[str, KeySlots],
        now: float,
        lease: float,
    ) -> dict[str, list[_Delivery]]:
        """Write the slot records with the holders admitted (each conditioned on the revision
        read); where another worker wrote first, read again and admit what still fits."""
        kept: dict[str, list[_Delivery]] = {}
        for _ in range(_CAS_TRIES):
            keys = list(groups)
            acks = await self._many(self._write(k, slots[k].encode(), slots[k].rev) for k in keys)
            failed = []
            for key, ack in zip(keys, acks, strict=True):
                rev = ack_seq(ack)
                if rev:
                    slots[key].rev = rev
                    kept[key] = groups[key]
                else:
                    failed.append(key)
            if not failed:
                return kept
            fresh = await self._read_meta(failed)
            retry: dict[str, list[_Delivery]] = {}
            for key, entry in zip(failed, fresh, strict=True):
                slots[key] = KeySlots.read(entry)
                for d in groups[key]:
                    if self._admit(slots[key], d, now, lease):
                        retry.setdefault(key, []).append(d)
                    else:
                        await self._block(d, slots[key], now)
            groups = retry
            if not groups:
                return kept
        for ds in groups.values():  # no luck against the other writers: try later
            for d in ds:
                await self._block(d, None, now)
        return kept

    async def _block(self, d: _Delivery, slots: KeySlots | None, now: float) -> None:
        """Put back a task whose concurrency key is full: naked with a growing delay (never
        past the moment the first holder's lease ends), and parked here so that a slot freed
        before then brings it back at once."""
        assert d.rec is not None
        delay = min(0.05 * 2 ** min(max(d.delivered - 1, 0), 8), _BLOCKED_MAX)
        if slots is not None:
            delay = min(delay, slots.next_free(now) + 0.005)
        delay = max(delay, 0.005)
        await self._nak(d.msg.reply, delay)
        self._park(d.msg, str(d.rec[QUEUE]), str(d.rec[CONCURRENCY_KEY]), delay)

    async def _drop_slots(self, drops: dict[str, set[tuple[str, int]]], *, own: bool) -> None:
        """Remove holders from slot records: per (task key, fencing token), the claims of the
        task up to that token (``own``: only this backend's holder with exactly that token)."""
        todo = {k: v for k, v in drops.items() if v}
        for _ in range(_CAS_TRIES):
            if not todo:
                return
            keys = list(todo)
            writes: list[tuple[str, KeySlots]] = []
            for key, entry in zip(keys, await self._read_meta(keys), strict=True):
                slots = KeySlots.read(entry)
                if slots.drop(todo[key], self._owner if own else None):
                    writes.append((key, slots))
            if not writes:
                return
            acks = await self._many(self._write(k, s.encode(), s.rev) for k, s in writes)
            todo = {
                k: todo[k] for (k, _), ack in zip(writes, acks, strict=True) if not ack_seq(ack)
            }
        raise BackendError("could not free concurrency slots: their records kept changing")

    async def _free_slots(self, drops: dict[str, set[tuple[str, int]]], own: bool = False) -> None:
        """``_drop_slots`` after the outcomes are stored: a failure here only delays the slot
        until its holder's lease runs out, so it is logged, not raised."""
        try:
            await self._drop_slots(drops, own=own)
        except BackendError as exc:
            log.warning("freeing concurrency slots failed (%s); they free at lease end", exc)

    async def _extend_slots(
        self, items: Sequence[tuple[str, str, int]], until: float, now: float
    ) -> list[bool]:
        """Extend the slots held by claims (slot record key, task key, fencing token) to
        ``until``; per claim, whether its slot was still held under an unexpired lease."""
        held = [False] * len(items)
        groups: dict[str, list[int]] = {}
        for i, (key, _, _) in enumerate(items):
            groups.setdefault(key, []).append(i)
        for _ in range(_CAS_TRIES):
            keys = list(groups)
            writes: list[tuple[str, KeySlots]] = []
            for key, entry in zip(keys, await self._read_meta(keys), strict=True):
                slots = KeySlots.read(entry)
                for i in groups[key]:
                    _, task, fence = items[i]
                    held[i] = slots.extend(task, fence, until, now)
                if any(held[i] for i in groups[key]):
                    writes.append((key, slots))
            if not writes:
                return held
            acks = await self._many(self._write(k, s.encode(), s.rev) for k, s in writes)
            groups = {
                k: groups[k] for (k, _), ack in zip(writes, acks, strict=True) if not ack_seq(ack)
            }
            if not groups:
                return held
        raise BackendError("could not extend concurrency slots: their records kept changing")

    async def _decide(self, d: _Delivery, now: float) -> bool:
        """True if the delivery's task is due to be claimed; otherwise ack or nak it."""
        rec, reply = d.rec, d.msg.reply
        if rec is None:
            if not d.stamp or now - d.stamp < _ORPHAN_GRACE:
                # Enqueue writes record and message at once: the record may not be there yet.
                delay = min(0.05 * 2 ** max(d.delivered - 1, 0), 2.0)
                await self._nak(reply, delay)
            else:
                await self._publish(reply, b"+ACK")  # its record expired or was never stored
            return False
        if rec.get(GENERATION) != d.head.get(GENERATION) or rec[STATE] in FINAL:
            await self._publish(reply, b"+ACK")  # an older life of the id, or finished
            return False
        if rec[STATE] == "pending":
            if rec[ETA] > now:
                await self._nak(reply, rec[ETA] - now)
                return False
            return True
        lease_until = rec.get(LEASE_UNTIL, 0)
        if lease_until > now:
            await self._nak(reply, lease_until - now)
            return False
        return True  # running, and its lease ran out: its worker was lost

    def _running(self, d: _Delivery, now: float, worker_id: str, lease: float) -> dict[str, Any]:
        assert d.rec is not None
        return running(d.rec, d.rev, now, worker_id, lease)

    def _hand_out(self, d: _Delivery, rec: dict[str, Any], rev: int) -> Claim:
        task_id, fence = rec[TASK_ID], rec[FENCE]
        previous = self._held_fence.pop(task_id, None)
        if previous is not None:
            self._held.pop((task_id, previous), None)
        self._held[(task_id, fence)] = _Held(d.msg.reply, rev, rec)
        self._held_fence[task_id] = fence
        return claim_of(rec, d.payload, str(d.head.get(OPTIONS, "")), d.problem)

    def _forget(self, key: tuple[str, int]) -> _Held | None:
        held = self._held.pop(key, None)
        if self._held_fence.get(key[0]) == key[1]:
            del self._held_fence[key[0]]
        return held

    def _park(self, msg: Any, queue: str, ck: str, delay: float) -> None:
        """Remember a message whose concurrency key was full (it was naked with ``delay``), so
        that a slot freed before then brings it back at once."""
        seq = stream_seq(msg.reply)
        if not seq:
            return
        parked = self._parked.setdefault((queue, ck), {})
        parked.pop(seq, None)
        parked[seq] = (msg, time.monotonic() + delay)
        if len(parked) > 64:
            now = time.monotonic()
            for stale in [k for k, (_, until) in parked.items() if until <= now]:
                del parked[stale]
            while len(parked) > _MAX_PARKED:
                del parked[next(iter(parked))]  # the oldest; its own timer brings it back
        if len(self._parked) > _MAX_PARKED:
            now = time.monotonic()
            for slot in [
                k for k, v in self._parked.items() if all(u <= now for _, u in v.values())
            ]:
                del self._parked[slot]

    def _unpark(self, queue: str, ck: str, count: int) -> None:
        """``count`` slots of (queue, ck) were freed: hand as many parked messages of that key
        (highest priority, then oldest first) to the next claim, and wake the waiters. A message
        no claim takes soon goes back to the stream."""
        parked = self._parked.get((queue, ck))
        if not parked:
            return
        now = time.monotonic()
        ready: list[tuple[int, int, Any, Consumer]] = []
        for seq, (msg, until) in list(parked.items()):
            if until <= now:
                del parked[seq]  # its timer gave it back already
                continue
            with contextlib.suppress(ValueError):
                priority = int(msg.subject.rsplit(".", 1)[-1])
                consumer = self._consumers.get(self._consumer_name(queue, priority))
                if consumer is not None:
                    ready.append((-priority, seq, msg, consumer))
        ready.sort(key=lambda item: item[:2])
        for _, seq, msg, consumer in ready[: max(count, 1)]:
            del parked[seq]
            self._buffer(consumer, msg)
        if not parked:
            del self._parked[(queue, ck)]
        if ready:
            self._work.set()

    async def _nak(self, reply: str | None, delay: float) -> None:
        if reply:
            # A longer delay comes back early and is naked again by `_decide`, which re-reads
            # the record: the server's delay is an int64 of nanoseconds (292 years at most),
            # and one it cannot hold would redeliver at once, over and over.
            delay = delay if delay < _MAX_NAK_DELAY else _MAX_NAK_DELAY
            await self._publish(reply, b'-NAK {"delay": %d}' % max(int(delay * NS), 1_000_000))

    # -- leases and settlements -------------------------------------------------------------

    async def _current(
        self, refs: Sequence[ClaimRef]
    ) -> list[tuple[_Held | None, dict[str, Any] | None, int]]:
        """Per claim: (held, record to build on, its revision) — from what this backend holds,
        or read when it holds nothing for the claim."""
        out: list[tuple[_Held | None, dict[str, Any] | None, int]] = []
        unknown = []
        for i, ref in enumerate(refs):
            held = self._held.get((ref.task_id, ref.fencing_token))
            out.append((held, held.rec if held else None, held.rev if held else 0))
            if held is None:
                unknown.append(i)
        if unknown:
            found = await self._get_many([task_key(refs[i].task_id) for i in unknown])
            for i, got in zip(unknown, found, strict=True):
                if got is not None:
                    out[i] = (None, got[0], got[2])
        return out

    async def _fenced_writes(
        self,
        refs: Sequence[ClaimRef],
        build: list[Any],
        state: list[tuple[_Held | None, dict[str, Any] | None, int]] | None = None,
    ) -> list[tuple[int, dict[str, Any] | None]]:
        """Write ``build[i](record)`` for each claim that is current; retry on a lost race when
        the claim is still current (e.g. a cancel flag was set meanwhile). Per claim: (new
        revision, record written), or (0, record found) if the claim is not current."""
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
            acks = await self._many(
                self._write(task_key(refs[i].task_id), encode(*split(new)), rev)
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
            found = await self._get_many([task_key(refs[i].task_id) for i in retry])
            for i, got in zip(retry, found, strict=True):
                held = state[i][0]
                state[i] = (held, got[0], got[2]) if got is not None else (held, None, 0)
                results[i] = (0, state[i][1])
            todo = retry
        return results

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Rewrite each current claim's lease and push its message's redelivery out to match."""
        now = self._now()

        def extend(rec: dict[str, Any]) -> dict[str, Any]:
            return leased(rec, now + lease)

        state = await self._current(claims)
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
            extended = await self._extend_slots(items, now + lease, now)
            lapsed = {i for i, ok in zip(slotted, extended, strict=True) if not ok}
            for i in lapsed:
                state[i] = (state[i][0], None, 0)
        results = await self._fenced_writes(claims, [extend] * len(claims), state)
        drops: dict[str, set[tuple[str, int]]] = {}
        states = []
        for i, (ref, (rev, rec)) in enumerate(zip(claims, results, strict=True)):
            key = (ref.task_id, ref.fencing_token)
            if not rev or rec is None:
                self._forget(key)
                states.append(LeaseState.LOST)
                if i in slot_of and i not in lapsed:
                    drops.setdefault(slot_of[i], set()).add(
                        (task_key(ref.task_id), ref.fencing_token)
                    )
                continue
            held = self._held.get(key)
            if held is not None:  # (not settled meanwhile)
                held.rev, held.rec = rev, rec
                await self._nak(held.reply, lease)
            states.append(
                LeaseState.CANCEL_REQUESTED if rec.get(CANCEL_REQUESTED) else LeaseState.HELD
            )
        if drops:
            await self._free_slots(drops)
        return states

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Write each outcome if its claim is current, then ack (finish) or nak (retry, release)
        the message; finished tasks go into the expiry index."""
        if not settlements:
            return []
        now = self._now()
        builders = [self._settler(s, now) for s in settlements]
        refs = [s.claim for s in settlements]
        results = await self._fenced_writes(refs, builders)
        applied: list[bool] = []
        expiring: dict[str, list[list[Any]]] = {}
        drops: dict[str, set[tuple[str, int]]] = {}
        freed: dict[tuple[str, str], int] = {}
        for item, (rev, rec) in zip(settlements, results, strict=True):
            key = (item.claim.task_id, item.claim.fencing_token)
            held = self._forget(key)
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
                    await self._publish(reply, b"+ACK")
                expiring.setdefault(expiry_class(rec[RESULT_TTL]), []).append(
                    [task_key(rec[TASK_ID]), rev, rec[EXPIRES_AT]]
                )
            elif isinstance(item, Reschedule):
                await self._nak(reply, max(item.eta - now, 0.0))
            elif reply:
                await self._publish(reply, b"-NAK")
        if drops:
            await self._free_slots(drops)
        for (queue, ck), count in freed.items():
            # Here first (a claim right after this settle finds them), then in every other
            # process (the notification also comes back here, finding less to wake).
            self._unpark(queue, ck, count)
            await self._publish(f"{self._subject_prefix}.n.k.{queue}", f"{count} {ck}".encode())
        if expiring:
            await self._index(expiring)
        return applied

    def _settler(self, item: Settlement, now: float) -> Any:
        def finish(rec: dict[str, Any]) -> dict[str, Any]:
            assert isinstance(item, Finish)
            return finished(rec, item, now)

        def reschedule(rec: dict[str, Any]) -> dict[str, Any]:
            assert isinstance(item, Reschedule)
            return rescheduled(rec, item)

        def release(rec: dict[str, Any]) -> dict[str, Any]:
            return released(rec)

        if isinstance(item, Finish):
            return finish
        if isinstance(item, Reschedule):
            return reschedule
        return release

    async def _index(self, expiring: dict[str, list[list[Any]]]) -> None:
        """Append finished records to the expiry index, one message per ttl class.

        The outcomes are stored already, so a failure here must not fail the settlement: the
        entries are kept and appended with the next ones (or by the next purge).
        """
        for ttl_class, entries in self._unindexed.items():
            expiring.setdefault(ttl_class, []).extend(entries)
        self._unindexed = {}
        items = []
        for ttl_class, entries in expiring.items():
            body = json.dumps(
                {INDEX_EXPIRES: max(e[2] for e in entries), INDEX_KEYS: entries}
            ).encode()
            items.append((f"{self._subject_prefix}.x.{ttl_class}", body, None))
        try:
            for reply in await self._many(items):
                ack_seq(reply)
        except BackendError as exc:
            log.warning(
                "adding %d results to the expiry index failed (%s); retrying later",
                sum(len(e) for e in expiring.values()),
                exc,
            )
            for ttl_class, entries in expiring.items():
                self._unindexed.setdefault(ttl_class, []).extend(entries)

    # -- cancel and reads -------------------------------------------------------------------

    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Finish a pending task as cancelled, or flag a running one; conditioned writes."""
        key = task_key(task_id)
        for _ in range(20):
            (got,) = await self._get_many([key])
            now = self._now()
            if got is None or expired(got[0], now):
                return CancelOutcome.NOT_FOUND
            rec, _, rev = got
            if rec[STATE] in FINAL:
                return CancelOutcome.ALREADY_FINISHED
            if rec[STATE] == "running":
                if rec.get(CANCEL_REQUESTED):
                    return CancelOutcome.REQUESTED
                new = cancel_flagged(rec)
                if ack_seq(await self._one(*self._write(key, encode(new), rev))):
                    return CancelOutcome.REQUESTED
                continue
            new = cancelled(rec, now)
            new_rev = ack_seq(await self._one(*self._write(key, encode(new), rev)))
            if new_rev:
                await self._index(
                    {expiry_class(rec[RESULT_TTL]): [[key, new_rev, new[EXPIRES_AT]]]}
                )
                return CancelOutcome.CANCELLED
        raise BackendError(f"could not cancel task {task_id!r}: its record kept changing")

    async def get_task(self, task_id: str) -> TaskSnapshot | None:
        """Read the task's record (``None`` if unknown or its result expired)."""
        (got,) = await self._get_many([task_key(task_id)])
        return self._snapshot(got)

    def _snapshot(self, got: tuple[dict[str, Any], bytes, int] | None) -> TaskSnapshot | None:
        if got is None:
            return None
        rec, tail, _ = got
        if expired(rec, self._now()):
            return None
        return snapshot_of(rec, tail)

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Watch the record's subject (every write to the key is published there) and re-read
        it when a write looks final; a growing re-read interval covers missed notices."""
        nc = self._client()
        key = task_key(task_id)
        event = asyncio.Event()

        async def on_write(msg: Any) -> None:
            if not msg.data.startswith(UNFINISHED):
                event.set()  # finished (or deleted): read it

        try:
            sub = await nc.subscribe(self._kv_prefix + key, cb=on_write)
        except Exception as exc:
            raise BackendError(f"NATS: {type(exc).__name__}: {exc}") from exc
        deadline = time.monotonic() + timeout
        fallback = 0.5
        try:
            while True:
                event.clear()
                snap = await self.get_task(task_id)
                remaining = deadline - time.monotonic()
                if snap is None or snap.status.is_final or remaining <= 0 or self._nc is None:
                    return snap
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(remaining, fallback))
                fallback = min(fallback * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- waiting for work -------------------------------------------------------------------

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Hold a long-polling pull request on each of the queues' consumers; return when one
        brings a message, a new priority appears, or ``timeout`` passes."""
        self._work.clear()
        consumers = await self._queue_consumers(queues, refresh_after=_PRIORITY_REFRESH / 2)
        if any(c.buffer for _, _, c in consumers):
            return
        nc = self._client()
        now = time.monotonic()
        expires = min(max(timeout, 0.05), 30.0)
        for _, _, consumer in consumers:
            if consumer.poll_until > now:
                continue  # the last long poll is still out there
            consumer.poll_until = now + expires
            body = json.dumps({"batch": 1, "expires": int(expires * NS)}).encode()
            try:
                await nc.publish(consumer.next_subject, body, reply=consumer.poll_inbox)
            except Exception as exc:
                consumer.poll_until = 0.0
                raise BackendError(f"NATS: {type(exc).__name__}: {exc}") from exc
        if timeout <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._work.wait(), timeout)

    # -- cron -------------------------------------------------------------------------------

    async def put_cron(self, name: str, definition: bytes, start: float) -> None:
        """Create the schedule's record (``last_tick = start``) or replace its definition and
        keep its ``last_tick`` (a conditioned write), then list its name in the index."""
        key = cron_key(name)
        for _ in range(_CAS_TRIES):
            (entry,) = await self._read_meta([key])
            tick = start
            if entry is not None and entry.head is not None:
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    tick = float(entry.head[CRON_TICK])
            data = encode({NAME: name, CRON_TICK: tick}, definition)
            if ack_seq(await self._one(*self._write(key, data, entry.rev if entry else 0))):
                break
        else:
            raise BackendError(f"could not store cron {name!r}: its record kept changing")
        await self._cron_index(name, add=True)

    async def delete_cron(self, name: str) -> bool:
        """Delete the schedule's record by its revision, then take its name off the index."""
        key = cron_key(name)
        for _ in range(_CAS_TRIES):
            (entry,) = await self._read_meta([key])
            if entry is None or entry.head is None:
                return False
            if await self._delete_rev(entry.rev):
                break
        else:
            raise BackendError(f"could not delete cron {name!r}: its record kept changing")
        await self._cron_index(name, add=False)
        (entry,) = await self._read_meta([key])
        if entry is not None and entry.head is not None:
            await self._cron_index(name, add=True)  # stored again meanwhile: keep it listed
        return True

    async def list_crons(self) -> list[CronRecord]:
        """Read the index of names, then every schedule's record (two round trips)."""
        (index,) = await self._read_meta([CRON_INDEX])
        names = index.head.get(CRON_NAMES, []) if index is not None and index.head else []
        found = await self._read_meta([cron_key(n) for n in names])
        out = []
        for entry in found:
            if entry is None or entry.head is None:
                continue  # listed by a put or delete that was interrupted
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out.append(
                    CronRecord(str(entry.head[NAME]), entry.tail, float(entry.head[CRON_TICK]))
                )
        out.sort(key=lambda r: r.name)
        return out

    async def advance_cron(self, name: str, expected: float, tick: float) -> bool:
        """Compare-and-set of ``last_tick``: a write conditioned on the revision that showed
        ``expected``; a lost race reads again only to see whether ``expected`` still holds."""
        key = cron_key(name)
        for _ in range(_CAS_TRIES):
            (entry,) = await self._read_meta([key])
            if entry is None or entry.head is None or entry.head.get(CRON_TICK) != expected:
                return False
            data = encode({**entry.head, CRON_TICK: tick}, entry.tail)
            if ack_seq(await self._one(*self._write(key, data, entry.rev))):
                return True
        raise BackendError(f"could not advance cron {name!r}: its record kept changing")

    async def _cron_index(self, name: str, *, add: bool) -> None:
        """Add a name to (or remove it from) the index of schedules, a conditioned write."""
        for _ in range(_CAS_TRIES):
            (entry,) = await self._read_meta([CRON_INDEX])
            names: list[str] = []
            if entry is not None and entry.head is not None:
                names = list(entry.head.get(CRON_NAMES) or [])
            if (name in names) == add:
                return
            names = sorted({*names, name}) if add else [n for n in names if n != name]
            data = encode({CRON_NAMES: names})
            if ack_seq(await self._one(*self._write(CRON_INDEX, data, entry.rev if entry else 0))):
                return
        raise BackendError("could not update the index of cron schedules: it kept changing")

    async def _delete_rev(self, rev: int) -> bool:
        """Delete one revision of a record; ``False`` if it is no longer there (rewritten)."""
        result = await self._api(
            f"STREAM.MSG.DELETE.{self._kv_stream}",
            {"seq": rev, "no_erase": True},
            ok=(ERR_DELETE_NO_MESSAGE, ERR_NO_MESSAGE),
        )
        return bool(result and result.get("success"))

    # -- locks ------------------------------------------------------------------------------

    def _lock_held(self, entry: Entry | None, now: float) -> bool:
        """Whether a lock record is held: its TTL counts from the server's timestamp of the
        write that took or last extended it."""
        if entry is None or entry.head is None:
            return False
        try:
            return entry.stamp + float(entry.head[LOCK_TTL]) > now
        except (KeyError, TypeError, ValueError):
            return False

    async def acquire_lock(self, name: str, token: str, ttl: float) -> bool:
        """Create the lock's record, or replace one whose TTL ran out, by a write conditioned
        on the revision read; of racing clients exactly one write succeeds."""
        key = lock_key(name)
        data = encode({NAME: name, LOCK_TOKEN: token, LOCK_TTL: ttl})
        for _ in range(_CAS_TRIES):
            (entry,) = await self._read_meta([key])
            if self._lock_held(entry, self._now()):
                return False
            if ack_seq(await self._one(*self._write(key, data, entry.rev if entry else 0))):
                return True
        return False

    async def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Rewrite the record (restarting its TTL) if ``token`` holds the lock."""
        key = lock_key(name)
        data = encode({NAME: name, LOCK_TOKEN: token, LOCK_TTL: ttl})
        for _ in range(_CAS_TRIES):
            (entry,) = await self._read_meta([key])
            if (
                entry is None
                or entry.head is None
                or entry.head.get(LOCK_TOKEN) != token
                or not self._lock_held(entry, self._now())
            ):
                return False
            if ack_seq(await self._one(*self._write(key, data, entry.rev))):
                return True
        return False

    async def release_lock(self, name: str, token: str) -> bool:
        """Delete the record by its revision if ``token`` holds the lock (a record of this
        token whose TTL ran out is deleted too, but reported as not held)."""
        key = lock_key(name)
        for _ in range(_CAS_TRIES):
            (entry,) = await self._read_meta([key])
            if entry is None or entry.head is None or entry.head.get(LOCK_TOKEN) != token:
                return False
            held = self._lock_held(entry, self._now())
            if await self._delete_rev(entry.rev):
                return held
        return False

    # -- expiry and stats -------------------------------------------------------------------

    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Delete expired results, reading each ttl class of the expiry index from its oldest
        entry up to the first one still alive."""
        self._client()
        now = self._now()
        if self._unindexed:
            await self._index({})
        info = await self._api(
            f"STREAM.INFO.{self.stream}", {"subjects_filter": f"{self._subject_prefix}.x.*"}
        )
        subjects = ((info or {}).get("state") or {}).get("subjects") or {}
        removed = 0
        for subject in sorted(subjects):
            ttl_class = subject.rsplit(".", 1)[-1]
            consumer = await self._consumer(f"x_{ttl_class}", subject)
            while removed < limit:
                msgs, _ = await self._take(consumer, min(_MAX_FETCH, max(limit - removed, 1)))
                if not msgs:
                    break
                due: list[Any] = []
                alive = False
                for msg in msgs:
                    if alive:
                        await self._publish(msg.reply, b"-NAK")
                        continue
                    try:
                        body = json.loads(msg.data)
                        exp, keys = float(body[INDEX_EXPIRES]), list(body[INDEX_KEYS])
                    except (ValueError, KeyError, TypeError):
                        await self._publish(msg.reply, b"+TERM")
                        continue
                    if exp > now:
                        alive = True
                        await self._publish(msg.reply, b"-NAK")
                    else:
                        due.append((msg, keys))
                revs = [int(entry[1]) for _, keys in due for entry in keys]
                if revs:
                    removed += await self._delete_many(revs)
                for msg, _ in due:
                    await self._publish(msg.reply, b"+ACK")
                if alive:
                    break
        return removed

    async def _delete_many(self, seqs: Sequence[int]) -> int:
        """Delete records by revision; one already rewritten (enqueued again) stays."""
        replies = await self._many(
            (
                f"$JS.API.STREAM.MSG.DELETE.{self._kv_stream}",
                json.dumps({"seq": seq, "no_erase": True}).encode(),
                None,
            )
            for seq in seqs
        )
        count = 0
        for reply in replies:
            result = api_result(reply, (ERR_DELETE_NO_MESSAGE, ERR_NO_MESSAGE))
            count += bool(result and result.get("success"))
        return count

    async def stats(self, now: float) -> list[QueueStats]:
        """Count tasks per queue and state by reading every record (an ephemeral consumer)."""
        nc = self._client()
        now = self._now()
        name = "stats_" + secrets.token_hex(8)
        config = {
            "name": name,
            "deliver_policy": "all",
            "ack_policy": "all",
            "max_ack_pending": -1,
            "filter_subject": f"{self._kv_prefix}>",
            "mem_storage": True,
            "num_replicas": 1,
            "inactive_threshold": 60 * NS,
        }
        created = await self._api(
            f"CONSUMER.CREATE.{self._kv_stream}", {"stream_name": self._kv_stream, "config": config}
        )
        assert created is not None
        name = created.get("name", name)
        total = int(created.get("num_pending", 0))
        inbox = nc.new_inbox()
        records: list[bytes] = []
        loop = asyncio.get_running_loop()
        # Per fetch: messages still expected, and a future resolved when they are all in (a
        # fetch that is exactly satisfied ends without a status message).
        state: dict[str, Any] = {"left": 0, "received": 0, "done": None, "last": loop.time()}

        async def on_msg(msg: Any) -> None:
            state["last"] = loop.time()
            done = state["done"]
            if msg.headers and msg.headers.get("Status"):
                if msg.headers.get("Status") != "100" and done is not None and not done.done():
                    done.set_result(None)
                return
            state["received"] += 1
            if not msg.headers or msg.headers.get("KV-Operation") is None:
                records.append(bytes(msg.data))
            state["left"] -= 1
            if state["left"] <= 0 and done is not None and not done.done():
                done.set_result(None)

        sub = await nc.subscribe(inbox, cb=on_msg)
        counts: dict[str, dict[str, int]] = {}
        try:
            while state["received"] < total:
                before = state["received"]
                batch = min(total - before, 1000)
                state.update(left=batch, done=loop.create_future(), last=loop.time())
                await nc.publish(
                    f"$JS.API.CONSUMER.MSG.NEXT.{self._kv_stream}.{name}",
                    json.dumps({"batch": batch, "no_wait": True}).encode(),
                    reply=inbox,
                )
                while not state["done"].done():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(state["done"]), 1.0)
                    if loop.time() - state["last"] > self.request_timeout:
                        raise BackendError("NATS: reading the task records timed out")
                if state["received"] == before:
                    break  # records removed meanwhile
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self._api(f"CONSUMER.DELETE.{self._kv_stream}.{name}", None)
        for data in records:
            try:
                rec, _ = decode(data)
                status, queue = rec[STATE], rec[QUEUE]
            except (ValueError, KeyError, TypeError):
                continue
            if expired(rec, now):
                continue
            kind = {
                "pending": "scheduled" if rec.get(ETA, 0) > now else "pending",
                "running": "running",
                "success": "succeeded",
                "failed": "failed",
                "cancelled": "cancelled",
            }.get(status)
            if kind is None:
                continue
            c = counts.setdefault(queue, {})
            c[kind] = c.get(kind, 0) + 1
        return [QueueStats(queue=q, **c) for q, c in sorted(counts.items())]


def _redact(url: str) -> str:
    """A server URL without its user info: with user/password authentication the user name is
    a credential too, so it is hidden along with the password or token (``redact_url`` keeps
    the user name)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}").geturl()
