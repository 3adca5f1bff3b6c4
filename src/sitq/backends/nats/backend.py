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
  is at most ``_client.MAX_NAK_DELAY`` (a day): a task due later comes back once a day, finds
  its record not due and is naked again, so any ETA sitq accepts (up to year 9999) waits without
  cost.
* **Two writes per enqueue.** Record and message cannot be written atomically in 2.9; the order
  makes a failure between them harmless: at worst a message without a record (dropped by the
  worker that gets it once it is ``_claim.ORPHAN_GRACE`` old) or, for a generated id nobody
  has seen, a pending record without a message. An explicit ``task_id`` is always safe to
  enqueue again.
* **Payloads.** A pending record keeps the task's payload as its tail, with the engine's
  options and the ``function``; a claim's record leaves them to the work message and the
  claim's holder, which writes them back into a failed, cancelled, retried or released record
  (a success keeps only its value). So ``cancel`` and ``requeue`` have what they need, and a
  heartbeat never rewrites a payload.
* **Listing.** JetStream has no secondary index: the stream ``IX_<stream>`` holds one entry
  per task on a subject per state and queue (pending: per queue and priority), written by the
  step that changes the task's state, and deleted by the next one; ``list_tasks`` reads a
  subject from a sequence on (finished ones backwards) and checks each entry against its
  record. Worker records are entries there too. See ``_index``, ``_listing``, ``_workers``.
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
  list of its slot holders; ``_.format``, the format of the store's records. Names are encoded
  as task ids are. Every change to them is a write conditioned on the revision read, and a
  delete removes one exact revision.
* **Locks.** A lock record holds its token and TTL; the TTL counts from the server's timestamp
  of the write that took or last extended the lock, judged against this client's estimate of
  the server's clock (the one leases use), so the holder's own clock never matters.
* **Concurrency keys.** A claim takes a keyed task's slot before it writes the task's record:
  it adds ``[task key, fencing token, lease until, owner]`` to the slots record, conditioned on
  the revision that showed fewer than the task's limit of other unexpired holders. A task whose
  key is full is naked with a back-off growing to ``_claim._BLOCKED_MAX`` (never past the first
  holder's lease end) and parked in the client that saw it; a settle removes the holder and
  notifies ``sitq.<stream>.n.k.<queue>``, and each client hands as many parked messages of
  that key to its next claim. Heartbeats extend the holder first: a claim whose slot lapsed is
  lost. A holder whose task never started (a crash between the two writes) lapses at its
  lease end.
* Streams and consumers are created on ``connect()`` (and consumers when a queue or priority is
  first seen), idempotently: any number of workers may start at once.
* **Format.** ``connect()`` reads ``_.format``; on a store of an earlier format it gives every
  task record its listing entry first, idempotently and by conditioned writes, then sets the
  marker (``_migrate``).

The layers, one per module: the record format (field names, encoding, the changes each step
makes) in ``_records``; the JetStream API's replies, ack subjects and per-consumer state in
``_jetstream``; the connection and its requests (API calls, record reads, conditioned writes,
deletes) in ``_client``; the server's clock in ``_clock``; the pull consumers, long polls and
parked messages in ``_consumers``; the slots records of concurrency keys in ``_slots``. The
steps: ``_enqueue``, ``_claim`` (and the claims held), ``_settle`` (leases and settlements),
``_expiry`` (the expiry index and purge), ``_stats``, ``_cron``, ``_locks``, ``_index`` (the
listing index), ``_listing`` (listing and purging tasks), ``_requeue``, ``_workers`` and
``_migrate`` (the format migration). This module holds the backend's configuration, its life
cycle, cancel and the reads and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import re
import secrets
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from sitq.backends import redact_url, require
from sitq.backends._options import UrlOptions, as_int, as_seconds, as_str
from sitq.backends._waiting import Polls, wait_for_final, wait_on
from sitq.backends.base import Backend
from sitq.backends.nats import _cron, _locks
from sitq.backends.nats._claim import Claimer, Holdings
from sitq.backends.nats._client import Client
from sitq.backends.nats._clock import ServerClock
from sitq.backends.nats._consumers import PRIORITY_REFRESH, Consumers
from sitq.backends.nats._enqueue import Enqueuer
from sitq.backends.nats._expiry import ExpiryIndex
from sitq.backends.nats._index import Index
from sitq.backends.nats._jetstream import NS, ack_seq
from sitq.backends.nats._listing import Lister
from sitq.backends.nats._migrate import Migrator
from sitq.backends.nats._move import Mover
from sitq.backends.nats._records import (
    CANCEL_REQUESTED,
    EXPIRES_AT,
    FINAL,
    LIST_SEQ,
    LIST_TOKEN,
    QUEUE,
    RESULT_TTL,
    STATE,
    UNFINISHED,
    cancel_flagged,
    cancelled,
    encode,
    expired,
    expiry_class,
    snapshot_of,
    split,
    task_key,
)
from sitq.backends.nats._replace import Replacer
from sitq.backends.nats._requeue import Requeuer
from sitq.backends.nats._settle import Settler
from sitq.backends.nats._stats import count_tasks
from sitq.backends.nats._workers import Workers
from sitq.errors import BackendError, ConfigurationError, check_seconds
from sitq.models import (
    CancelOutcome,
    Claim,
    ClaimRef,
    CronRecord,
    HeldTask,
    LeaseState,
    NewTask,
    Progress,
    QueueStats,
    ReplaceOutcome,
    RequeueOutcome,
    Settlement,
    SnapshotPage,
    StoredTask,
    TaskSnapshot,
    TaskStatus,
    WorkerRecord,
)

log = logging.getLogger("sitq.nats")

_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_URL_OPTIONS = {
    "server": as_str,
    "stream": as_str,
    "name": as_str,
    "tls_ca": as_str,
    "tls_cert": as_str,
    "tls_key": as_str,
    "replicas": as_int,
    "request_timeout": as_seconds,
    "connect_timeout": as_seconds,
    "ack_wait": as_seconds,
}


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
        self._closing = False
        self._subs: list[Any] = []
        self._client = Client(stream, self.request_timeout, self.describe())
        self._clock = ServerClock(self._client)
        self._consumers = Consumers(self._client, self.ack_wait)
        self._holdings = Holdings()
        self._index = Index(self._client)
        self._expiry = ExpiryIndex(self._client, self._clock, self._consumers, self._index)
        self._enqueuer = Enqueuer(self._client, self._clock, self._consumers, self._index)
        self._claimer = Claimer(
            self._client,
            self._clock,
            self._consumers,
            self._holdings,
            self._index,
            owner=secrets.token_hex(6),
            ack_wait=self.ack_wait,
        )
        self._settler = Settler(
            self._client, self._clock, self._consumers, self._holdings, self._expiry, self._index
        )
        self._lister = Lister(self._client, self._index)
        self._requeuer = Requeuer(
            self._client, self._clock, self._consumers, self._index, self._enqueuer.generation
        )
        self._replacer = Replacer(
            self._client, self._clock, self._consumers, self._index, self._enqueuer
        )
        self._workers = Workers(self._client, self._index)
        self._migrator = Migrator(self._client, self._clock, self._index, self._expiry)
        self._mover = Mover(
            self._client,
            self._clock,
            self._consumers,
            self._index,
            self._lister,
            self._enqueuer.generation,
        )

    @classmethod
    def from_url(cls, url: str) -> NATSBackend:
        """A backend from ``nats://host:4222?stream=APP1&replicas=3``.

        Several servers: a repeated ``server=`` parameter
        (``nats://h1:4222?server=nats://h2:4222&server=nats://h3:4222``), or comma-separated hosts
        (``nats://h1,h2,h3:4222``; ``backend_from_url`` accepts a port only on the last one).
        Other parameters: ``request_timeout``, ``connect_timeout``, ``ack_wait`` (seconds),
        ``name`` (the client name the server shows), ``tls_ca``, ``tls_cert`` and ``tls_key``.
        """
        scheme = urlsplit(url).scheme.lower()
        if scheme not in cls.scheme:
            raise ConfigurationError(f"not a nats:// or tls:// URL: {redact_url(url)}")
        query = UrlOptions(url, _URL_OPTIONS, backend="NATS", repeated=frozenset({"server"}))
        query.refuse_others()
        netloc = query.parts.netloc
        auth = ""
        if "@" in netloc:
            auth, _, netloc = netloc.rpartition("@")
            auth += "@"
        servers = [f"{scheme}://{auth}{host.strip()}" for host in netloc.split(",") if host.strip()]
        options = dict(query.options)
        for value in options.pop("server", []):
            servers.append(value if "://" in value else f"{scheme}://{value}")
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
        """The servers and the stream, without credentials (a NATS user name is one)."""
        return f"{','.join(redact_url(s) for s in self.servers)} (stream {self.stream})"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""
        return self._client.nc is not None

    async def connect(self) -> None:
        """Connect, check JetStream, create the stream and the bucket if they are missing, and
        bring a store written by an earlier version up to the current format."""
        if self._client.nc is not None:
            return
        self._closing = False
        self._consumers.work = asyncio.Event()
        self._client.last_error = ""
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
            reason = self._client.last_error or f"{type(exc).__name__}: {exc}"
            raise BackendError(f"cannot connect to NATS at {self.describe()}: {reason}") from exc
        if self._tls_required and not getattr(nc, "_server_info", {}).get("tls_required"):
            with contextlib.suppress(Exception):
                await nc.close()
            raise BackendError(
                f"the NATS server at {self.describe()} does not use TLS, but TLS was asked for "
                "(a tls:// URL or tls_ca): refusing to go on in plain text"
            )
        self._client.nc = nc
        try:
            await self._setup(nc)
        except BaseException:
            self._client.nc = None
            with contextlib.suppress(Exception):
                await nc.close()
            raise

    async def _setup(self, nc: Any) -> None:
        client = self._client
        version = nc.connected_server_version
        if (version.major, version.minor) < (2, 9):
            raise BackendError(
                f"NATSBackend needs NATS Server 2.9 or later, but {self.describe()} runs "
                f"{version}: upgrade the server"
            )
        self._subs = [await client.listen(nc)]
        try:
            await client.api("INFO", None)
        except BackendError as exc:
            raise BackendError(
                f"JetStream is not available at {self.describe()} ({exc}): start nats-server "
                "with -js (sitq needs NATS Server 2.9+ with JetStream)"
            ) from exc
        work = await client.ensure_stream(
            self.stream,
            {
                "name": self.stream,
                "subjects": [f"{client.subject_prefix}.q.>", f"{client.subject_prefix}.x.>"],
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
        kv = await client.ensure_stream(
            client.kv_stream,
            {
                "name": client.kv_stream,
                "subjects": [f"{client.kv_prefix}>"],
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
        await client.ensure_stream(self._index.stream, self._index.config(self.replicas))
        subjects = set(work["config"].get("subjects") or ())
        if work["config"].get("retention") != "workqueue" or f"{client.subject_prefix}.q.>" not in (
            subjects
        ):
            raise BackendError(
                f"stream {self.stream!r} exists but was not made by sitq (not a work-queue stream "
                f"on {client.subject_prefix}.q.>): choose another stream name"
            )
        # Followers of a replicated stream may answer direct gets from behind the leader; read
        # through the leader there, so that a reader sees every write that was acknowledged.
        config = kv["config"]
        client.direct = bool(config.get("allow_direct")) and config.get("num_replicas", 1) == 1
        self._subs.append(
            await nc.subscribe(f"{client.subject_prefix}.n.>", cb=self._consumers.on_notification)
        )
        await self._clock.measure()
        await self._migrator.ensure()

    async def close(self) -> None:
        """Give back prefetched messages, close the connection and wake every waiter."""
        if self._client.nc is not None and self._expiry.unindexed:
            with contextlib.suppress(Exception):
                await self._expiry.add({})
        if self._client.nc is not None:
            await self._index.settle_background()
        nc, self._client.nc = self._client.nc, None
        self._closing = True
        self._consumers.work.set()
        self._client.fail_requests(BackendError("NATSBackend was closed"))
        if nc is None:
            return
        await self._consumers.close(nc)
        self._holdings.clear()
        self._subs = []
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 10)

    def detach(self) -> None:
        """Drop the connection, its subscriptions, the consumers' state, the claims held and
        every request and task of an event loop that has ended, without any I/O; the next
        ``connect()`` opens a new connection on the running loop. Claims held are left to
        their leases."""
        self._client.nc = None
        self._closing = True
        self._client.forget_requests()
        self._consumers.forget()
        self._holdings.clear()
        self._clock.forget()
        self._index.forget_background()
        self._subs = []

    async def _on_error(self, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._client.last_error = error
        log.debug("NATS connection error: %s", error)

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        reason = self._client.last_error or "disconnected"
        log.warning("NATS connection lost (%s); reconnecting", reason)
        self._client.fail_requests(BackendError(f"NATS connection lost: {reason}"))
        self._consumers.connection_lost()

    async def _on_reconnected(self) -> None:
        log.warning("NATS connection re-established")
        self._client.last_error = ""
        self._consumers.stale = True
        self._consumers.work.set()

    # -- steps ------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store records and publish messages; an id still known is left alone (see
        ``_enqueue``)."""
        return await self._enqueuer.enqueue(tasks)

    async def enqueue_replacing(self, task: NewTask) -> ReplaceOutcome:
        """Store the task, or replace the pending or finished record of its id by a
        conditioned write (see ``_replace``)."""
        return await self._replacer.replace(task)

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Fetch from the queues' consumers highest priority first; claim each due task by a
        conditioned write of its record (see ``_claim``)."""
        return await self._claimer.claim(queues, limit, worker_id, lease)

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Rewrite each current claim's lease and push its message's redelivery out to match."""
        return await self._settler.extend_lease(claims, lease)

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Write each outcome if its claim is current, then ack (finish) or nak (retry, release)
        the message; finished tasks go into the expiry index."""
        return await self._settler.settle(settlements)

    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Finish a pending task as cancelled, or flag a running one; conditioned writes."""
        client = self._client
        key = task_key(task_id)
        for _ in range(20):
            (got,) = await client.get_many([key])
            now = self._clock.now()
            if got is None or expired(got[0], now):
                return CancelOutcome.NOT_FOUND
            rec, tail, rev = got
            if rec[STATE] in FINAL:
                return CancelOutcome.ALREADY_FINISHED
            if rec[STATE] == "running":
                if rec.get(CANCEL_REQUESTED):
                    return CancelOutcome.REQUESTED
                new = cancel_flagged(rec)
                if ack_seq(await client.one(*client.write(key, encode(*split(new)), rev))):
                    return CancelOutcome.REQUESTED
                continue
            token = self._index.token()
            subject = self._index.state_subject(TaskStatus.CANCELLED, str(rec[QUEUE]))
            entry = ack_seq(await client.one(*self._index.entry(subject, key, token)))
            new = {**cancelled(rec, now), LIST_TOKEN: token, LIST_SEQ: entry}
            new_rev = ack_seq(await client.one(*client.write(key, encode(new, tail), rev)))
            if new_rev:
                self._index.drop([int(rec.get(LIST_SEQ) or 0)])
                await self._expiry.add(
                    {expiry_class(rec[RESULT_TTL]): [[key, new_rev, new[EXPIRES_AT], entry]]}
                )
                return CancelOutcome.CANCELLED
            await self._index.drop_now([entry])
        raise BackendError(f"could not cancel task {task_id!r}: its record kept changing")

    # -- moving tasks between stores --------------------------------------------------------

    async def hold(self, queues: Sequence[str], limit: int, holder: str) -> list[HeldTask]:
        """Hold tasks for a move by conditioned writes of their records (see ``_move``)."""
        return await self._mover.hold(queues, limit, holder)

    async def put_stored(self, records: Sequence[StoredTask]) -> list[bool]:
        """Store moved tasks as an explicit id is enqueued; an id still known is left alone."""
        return await self._mover.put_stored(records)

    async def drop_held(self, refs: Sequence[ClaimRef]) -> list[bool]:
        """Delete held records by the exact revision their claim's holder read."""
        return await self._mover.drop_held(refs)

    # -- reads and waits --------------------------------------------------------------------

    async def get_task(self, task_id: str) -> TaskSnapshot | None:
        """Read the task's record (``None`` if unknown or its result expired)."""
        (got,) = await self._client.get_many([task_key(task_id)])
        if got is None:
            return None
        rec, tail, _ = got
        if expired(rec, self._clock.now()):
            return None
        return snapshot_of(rec, tail)

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Watch the record's subject (every write to the key is published there) and re-read
        it when a write looks final; a growing re-read interval covers missed notices."""
        nc = self._client.connection()
        event = asyncio.Event()

        async def on_write(msg: Any) -> None:
            if not msg.data.startswith(UNFINISHED):
                event.set()  # finished (or deleted): read it

        def arm() -> asyncio.Event:
            event.clear()
            return event

        try:
            sub = await nc.subscribe(self._client.kv_prefix + task_key(task_id), cb=on_write)
        except Exception as exc:
            raise BackendError(f"NATS: {type(exc).__name__}: {exc}") from exc
        try:
            return await wait_for_final(
                lambda: self.get_task(task_id),
                timeout,
                arm=arm,
                polls=Polls.growing(0.5, 5.0),
                is_open=lambda: self._client.nc is not None,
            )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Hold a long-polling pull request on each of the queues' consumers; return when one
        brings a message, a new priority appears, or ``timeout`` passes."""
        self._consumers.work.clear()
        consumers = await self._consumers.for_queues(queues, refresh_after=PRIORITY_REFRESH / 2)
        if any(c.buffer for _, _, c in consumers):
            return
        expires = min(max(timeout, 0.05), 30.0)
        await self._consumers.long_poll([c for _, _, c in consumers], expires)
        await wait_on(self._consumers.work, timeout)

    # -- cron and locks ---------------------------------------------------------------------

    async def put_cron(self, name: str, definition: bytes, start: float) -> None:
        """Create the schedule's record or replace its definition, keeping its ``last_tick``."""
        await _cron.put_cron(self._client, name, definition, start)

    async def delete_cron(self, name: str) -> bool:
        """Delete the schedule's record by its revision, then take its name off the index."""
        return await _cron.delete_cron(self._client, name)

    async def list_crons(self) -> list[CronRecord]:
        """Read the index of names, then every schedule's record (two round trips)."""
        return await _cron.list_crons(self._client)

    async def advance_cron(self, name: str, expected: float, tick: float) -> bool:
        """Compare-and-set of ``last_tick`` (see ``_cron``)."""
        return await _cron.advance_cron(self._client, name, expected, tick)

    async def acquire_lock(self, name: str, token: str, ttl: float) -> bool:
        """Create the lock's record, or replace one whose TTL ran out (see ``_locks``)."""
        return await _locks.acquire_lock(self._client, self._clock, name, token, ttl)

    async def acquire_any_lock(
        self, names: Sequence[str], token: str, ttl: float
    ) -> tuple[str | None, float]:
        """Read the locks' records in one batch and take the first free one (see ``_locks``)."""
        return await _locks.acquire_any_lock(self._client, self._clock, list(names), token, ttl)

    async def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Rewrite the record (restarting its TTL) if ``token`` holds the lock."""
        return await _locks.extend_lock(self._client, self._clock, name, token, ttl)

    async def release_lock(self, name: str, token: str) -> bool:
        """Delete the record by its revision if ``token`` holds the lock."""
        return await _locks.release_lock(self._client, self._clock, name, token)

    # -- expiry and stats -------------------------------------------------------------------

    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Delete expired results, reading each ttl class of the expiry index from its oldest
        entry up to the first one still alive."""
        return await self._expiry.purge(limit)

    async def stats(self, now: float) -> list[QueueStats]:
        """Count tasks per queue and state by reading every record (an ephemeral consumer)."""
        self._client.connection()
        return await count_tasks(self._client, self._clock.now())

    # -- inspection and operator actions ---------------------------------------------------

    async def list_tasks(
        self, status: TaskStatus, queue: str | None, limit: int, after: str | None, now: float
    ) -> SnapshotPage:
        """A page read through the listing index (see ``_listing`` for its order)."""
        return await self._lister.list_tasks(status, queue, limit, after, self._clock.now())

    async def requeue(self, task_ids: Sequence[str], now: float) -> list[RequeueOutcome]:
        """Make failed and cancelled records pending again and publish their work messages
        (see ``_requeue``)."""
        self._client.connection()
        return await self._requeuer.requeue(task_ids)

    async def purge_tasks(self, queue: str, status: TaskStatus, limit: int) -> int:
        """Delete records of the queue in that state found through the listing index (never
        running ones); a pending task's message left behind is dropped by the worker that
        receives it."""
        count, _ = await self._lister.purge_tasks(queue, status, limit, self._clock.now())
        return count

    async def save_progress(self, updates: Sequence[Progress]) -> None:
        """Write each current claim's progress into its record (fenced)."""
        self._client.connection()
        await self._settler.save_progress(updates)

    async def put_worker(self, record: WorkerRecord) -> None:
        """Write the worker's entry (see ``_workers``)."""
        self._client.connection()
        await self._workers.put(record)

    async def remove_worker(self, worker_id: str) -> None:
        """Delete the worker's entries."""
        self._client.connection()
        await self._workers.remove(worker_id)

    async def list_workers(self, now: float) -> list[WorkerRecord]:
        """The unexpired worker entries, by worker id."""
        self._client.connection()
        return await self._workers.list(now)
