"""The Redis backend, on redis-py's asyncio client: many workers on many hosts share one server
(or one Redis Cluster). ``RedisBackend`` holds the storage steps; each layer below them is a
module of its own:

* ``_keys``: the key layout. Every key of one queue shares the hash tag ``{<prefix>:<queue>}``,
  so each Lua script touches one slot and the backend works unchanged on Redis Cluster.
* ``_scripts`` and ``scripts/``: each state change is one Lua script in the queue's slot
  (``scripts/<step>.lua``, after the shared fragments of ``scripts/lib/`` it uses), called with
  ``EVALSHA`` (reloaded on ``NOSCRIPT``, so a ``SCRIPT FLUSH`` or a restarted server costs one
  extra round trip): enqueue (with the idempotency check), claim (lease, attempts, fencing
  token), extend, settle (finish / reschedule / release, each fenced), cancel, stats, purge;
  likewise each cron and lock step, in its own slot. Times come from the server's ``TIME``, so
  workers with skewed clocks agree on leases.
* ``_index``: ``get_task`` and ``cancel`` receive only an id: ``<prefix>:id:<id>`` (its own
  slot) names the task's queue. On a standalone server the enqueue script writes the entry
  with the task, and for an explicit id first checks that the queue the entry names does not
  hold the id still: one atomic step, so two clients enqueueing one id on two queues store it
  once. In a cluster a generated id's entry is written just before the script, and an explicit
  id's entry is claimed under a token first. ``purge_expired`` removes an entry once the result
  expired and the id is gone from its queue; a stale entry is harmless (the task key is the
  truth). Objects remember the queues of the ids they enqueued or claimed, so the common paths
  skip that lookup.
* ``_wire``: the calls to the server, each one round trip (pipelined on a standalone server,
  encoded by sitq), at most ``max_connections`` in flight; calls beyond that wait together in
  one batch.
* ``_pubsub``: wake-ups. Scripts that make tasks due publish on ``<prefix>:work:<queue>``, and
  a finish publishes on ``<prefix>:done:<id>``. One pub/sub connection per backend object,
  re-established with backoff if it drops (every waiter then looks again); a 1 s fallback
  poll covers anything missed, and idle workers also wake at the next ETA or lease expiry
  (which a claim returns, so an idle cycle costs one round trip).
* ``_records``: a task's hash read back as a snapshot, a claim script's reply as claims.
* ``_migration``: the store's format version, checked on connect; a store written by an
  earlier version is migrated (in bounded, resumable batches, one client at a time).

A step whose connection failed is retried only where that cannot act twice: claim and settle
carry a request id whose answer their script keeps for 10 s (a retry after a lost reply gets the
same answer); enqueue checks that the task does not exist; cancel is not retried.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from sitq.backends import redact_url, require
from sitq.backends._options import Convert, UrlOptions, as_bool, as_int, as_seconds, as_str
from sitq.backends._waiting import ChangeSignal, Polls, ResultWaiters, wait_for_final, wait_on
from sitq.backends.base import STATUS_CODE, Backend
from sitq.backends.redis import _move
from sitq.backends.redis._index import IdIndex
from sitq.backends.redis._keys import PREFIX, QueueKeys, queue_keys, queues_key, workers_key
from sitq.backends.redis._listing import merge_pages, queue_page
from sitq.backends.redis._migration import StoreFormat
from sitq.backends.redis._pubsub import Listener
from sitq.backends.redis._records import (
    LEASE_STATES,
    LIST_FIELDS,
    SNAPSHOT_FIELDS,
    crons,
    progress_args,
    read_after,
    read_claim,
    settle_args,
    snapshot,
    worker_record,
    workers,
)
from sitq.backends.redis._scripts import SCRIPTS, evalsha
from sitq.backends.redis._wire import Command, Raw, Wire, encode_enqueue, raise_errors
from sitq.errors import BackendError, ConfigurationError, check_seconds
from sitq.models import (
    CancelOutcome,
    Claim,
    ClaimRef,
    CronRecord,
    Finish,
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

_ENQUEUE_CHUNK = 100
# What scripts/replace.lua found, by its reply.
_REPLACED = {
    "1": ReplaceOutcome.STORED,
    "2": ReplaceOutcome.REPLACED_PENDING,
    "3": ReplaceOutcome.REPLACED_FINISHED,
    "4": ReplaceOutcome.RUNNING,
    "Q": ReplaceOutcome.OTHER_QUEUE,
}
_RANK_LEN = 34
# At most this many keyed tasks parked by one claim script (each costs a few commands).
_MAX_PARK = 1000
# A claim on several queues plans again when a queue's share was parked instead of taken.
_CLAIM_ROUNDS = 4
# The most tasks one purge script deletes (the caller repeats).
_PURGE_BATCH = 1000
# The requeue script's answer per task, a digit: its index here.
_REQUEUE_OUTCOMES = (RequeueOutcome.NOT_FOUND, RequeueOutcome.REFUSED, RequeueOutcome.REQUEUED)


def _millis(seconds: float) -> int:
    """A TTL in whole milliseconds for ``PX``/``PEXPIRE`` (at least 1: 0 is an error)."""
    return max(1, math.ceil(seconds * 1000))


def _as_cluster(value: str) -> bool:
    """``as_bool``, with an empty value read as false (``?cluster=``)."""
    return as_bool(value) if value.strip() else False


# sitq's own options of RedisBackend that a URL's query may carry.
_URL_OPTIONS: dict[str, Convert] = {
    "prefix": as_str,
    "cluster": _as_cluster,
    "command_timeout": as_seconds,
    "connect_timeout": as_seconds,
    "max_connections": as_int,
}


class RedisBackend(Backend):
    """Tasks in Redis (standalone, or a Redis Cluster with ``cluster=True``).

    ``host``/``port``/``db`` (or ``url``, e.g. ``redis://:password@host:6379/0`` or
    ``rediss://...``, whose query may carry the options ``from_url`` reads) say where the
    server is; ``prefix`` starts every key and channel name,
    so several applications can share one server. ``cluster=True`` talks to a Redis Cluster
    (``host``/``port`` or the URL name any node). ``command_timeout`` bounds each call to the
    server and ``connect_timeout`` each new connection, in seconds. ``max_connections`` bounds
    the connections one backend object opens to each server for its calls (one more carries its
    pub/sub): calls beyond it wait for a connection to free up. Durability is the server's:
    run it with ``appendonly yes`` (and ``appendfsync always`` for no loss on a crash).
    """

    scheme = ("redis", "rediss")

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        *,
        url: str | None = None,
        prefix: str = "sitq",
        username: str | None = None,
        password: str | None = None,
        ssl: bool = False,
        cluster: bool = False,
        command_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_connections: int = 100,
    ) -> None:
        require("redis", "redis", "RedisBackend")
        self._aioredis: Any = importlib.import_module("redis.asyncio")
        if isinstance(url, str):
            # sitq's own options may travel in the URL's query; the rest is redis-py's.
            options = UrlOptions(url, _URL_OPTIONS, backend="Redis")
            query = options.options
            if query:
                url = options.url_without_options()
            given: dict[str, Any] = {
                "prefix": prefix,
                "cluster": cluster,
                "command_timeout": command_timeout,
                "connect_timeout": connect_timeout,
                "max_connections": max_connections,
            }
            for key, value in query.items():
                if given[key] != _URL_DEFAULTS[key] and given[key] != value:
                    raise ConfigurationError(
                        f"{key} is set twice, to {given[key]!r} and to {value!r} in "
                        f"{redact_url(url)}: keep one"
                    )
                given[key] = value
            prefix = given["prefix"]
            cluster = given["cluster"]
            command_timeout = given["command_timeout"]
            connect_timeout = given["connect_timeout"]
            max_connections = given["max_connections"]
        if not isinstance(prefix, str) or not PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"prefix={prefix!r} is not valid: use 1-64 letters, digits or '_', '.', ':', '-'"
            )
        if url is not None:
            if not isinstance(url, str):
                raise ConfigurationError(f"url must be a redis:// or rediss:// URL, not {url!r}")
            scheme = urlsplit(url).scheme.lower()
            if scheme not in ("redis", "rediss"):
                raise ConfigurationError(
                    f"{redact_url(url)} is not a Redis URL: use redis://host:6379/0 or rediss://"
                )
        else:
            if not isinstance(host, str) or not host:
                raise ConfigurationError(f"host must be a non-empty string, not {host!r}")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ConfigurationError(f"port must be an int in 1-65535, not {port!r}")
            if isinstance(db, bool) or not isinstance(db, int) or db < 0:
                raise ConfigurationError(f"db must be an int >= 0, not {db!r}")
        for name, value in (
            ("command_timeout", command_timeout),
            ("connect_timeout", connect_timeout),
        ):
            check_seconds(name, value)
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ConfigurationError(
                f"max_connections must be a whole number >= 1, not {max_connections!r}"
            )
        if cluster and url is None and db != 0:
            raise ConfigurationError("a Redis Cluster has only db 0")
        self.url = url
        self.host = host
        self.port = port
        self.db = db
        self.prefix = prefix
        self.cluster = bool(cluster)
        self.command_timeout = float(command_timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_connections = max_connections
        self._username = username
        self._password = password
        self._ssl = ssl
        self._wire = Wire(
            cluster=self.cluster,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            max_connections=max_connections,
            describe=self.describe,
        )
        self._keys: dict[str, QueueKeys] = {}
        self._registered: set[str] = set()
        self._index = IdIndex(self._wire, prefix, self._queue_keys, self.describe)
        self._format = StoreFormat(self._wire, prefix, self._queue_keys)
        self.migrated: int | None = None
        """The listing entries that the store format migration run by this object's
        ``connect()`` added (``None``: it ran none, the store was up to date)."""
        self._done_prefix = f"{prefix}:done:"
        self._work_prefix = f"{prefix}:work:"
        # One slot for all cron schedules (and the records of their compare-and-sets).
        self._crons = f"{prefix}:{{{prefix}:crons}}"
        self._workers = workers_key(prefix)
        self._changes = ChangeSignal()
        self._waiters = ResultWaiters()
        # When the last single-queue claim found the next task due (time.monotonic()).
        self._due_hint: tuple[tuple[str, ...], float] | None = None
        self._listener = Listener(
            client=lambda: self._wire.client,
            cluster=self.cluster,
            hello=f"{prefix}:hello",
            done_prefix=self._done_prefix,
            work_prefix=self._work_prefix,
            on_work=self._on_work,
            on_done=self._on_done,
            on_gap=self._signal_all,
        )

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """A backend from ``redis://[[user]:password@]host:6379/0?prefix=app1`` (or
        ``rediss://`` for TLS). Backend options travel as query parameters: ``prefix``,
        ``cluster`` (``true`` for a Redis Cluster), ``command_timeout``, ``connect_timeout``,
        ``max_connections``; any other parameter goes to redis-py (``ssl_cert_reqs``,
        ``socket_keepalive``, ...).
        ``RedisBackend(url=...)`` reads the same parameters."""
        return cls(url=url)

    def describe(self) -> str:
        """The server, database and prefix, without a password."""
        where = (
            redact_url(self.url)
            if self.url is not None
            else f"{'rediss' if self._ssl else 'redis'}://{self.host}:{self.port}/{self.db}"
        )
        return f"{where} (prefix {self.prefix}{', cluster' if self.cluster else ''})"

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True between ``connect()`` and ``close()``."""
        return self._wire.client is not None

    def _make_client(self) -> Any:
        options = self._wire.client_options()
        if self.cluster:
            cluster_cls = importlib.import_module("redis.asyncio.cluster").RedisCluster
            if self.url is not None:
                return cluster_cls.from_url(self.url, **options)
            return cluster_cls(
                host=self.host,
                port=self.port,
                username=self._username,
                password=self._password,
                ssl=self._ssl,
                **options,
            )
        if self.url is not None:
            return self._aioredis.Redis.from_url(self.url, **options)
        return self._aioredis.Redis(
            host=self.host,
            port=self.port,
            db=self.db,
            username=self._username,
            password=self._password,
            ssl=self._ssl,
            **options,
        )

    async def connect(self) -> None:
        """Connect, load the Lua scripts into the server's script cache, and bring a store
        written by an earlier version up to this version's format (see ``_migration``; one
        client migrates, the others wait for it). Idempotent."""
        if self._wire.client is not None:
            return
        self._changes = ChangeSignal()
        self._listener.open()
        try:
            client = self._make_client()
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"invalid Redis settings for {self.describe()}: {exc}"
            ) from exc
        await self._wire.open(client)
        try:
            if not self._format.current:
                self.migrated = await self._format.ensure()
        except BaseException:
            await self.close()
            raise

    def detach(self) -> None:
        """Drop the client, its connections, the pub/sub listener and every waiter of an event
        loop that has ended, without any I/O; the next ``connect()`` opens new ones."""
        self._wire.abandon()
        self._listener.abandon()
        self._changes = ChangeSignal()
        self._waiters = ResultWaiters()
        self._due_hint = None

    async def close(self) -> None:
        """Close the connections and the pub/sub listener; wake every waiter. Idempotent."""
        client = self._wire.detach()
        await self._listener.close()
        self._signal_all()
        await self._wire.shutdown(client)
        if client is not None:
            self._listener.forget()

    def _signal_all(self) -> None:
        """Wake every waiter: anything may have changed unheard."""
        self._changes.signal()
        self._waiters.wake_all()

    def _on_work(self) -> None:
        self._changes.signal()

    def _on_done(self, task_ids: Iterable[str]) -> None:
        self._waiters.finished(task_ids)

    def _poll_cap(self) -> float:
        """The longest a waiter goes without re-reading the store (a push may be missed)."""
        return 1.0 if self._listener.listening else 0.1

    # -- helpers ----------------------------------------------------------------------------

    def _check(self) -> None:
        if self._wire.client is None:
            raise BackendError("RedisBackend is not connected: call `await backend.connect()`")

    def _queue_keys(self, queue: str) -> QueueKeys:
        keys = self._keys.get(queue)
        if keys is None:
            keys = queue_keys(self.prefix, queue, self._work_prefix)
            self._keys[queue] = keys
        return keys

    # -- tasks ------------------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store tasks with one script call per queue (in one round trip); an id still known
        is left alone. On a standalone server the script also checks and sets each id's
        index entry; on a Redis Cluster an explicit id claims its entry first (see
        ``IdIndex.enqueue_claimed``)."""
        self._check()
        if not tasks:
            return []
        if len(tasks) == 1 and tasks[0].queue in self._registered and not self.cluster:
            return [await self._enqueue_one(tasks[0])]
        stored = [False] * len(tasks)
        queues = {t.queue for t in tasks}
        commands: list[Command] = [
            ("SADD", queues_key(self.prefix), queue) for queue in queues - self._registered
        ]
        if self.cluster:
            # Each id's index key has a slot of its own: one SET per generated id (redis-py
            # sends each to its node), before the queue's script.
            now = [i for i, t in enumerate(tasks) if t.fresh_id]
            commands += [("SET", self._index.key(tasks[i].id), tasks[i].queue) for i in now]
            explicit = [i for i, t in enumerate(tasks) if not t.fresh_id]
        else:
            now = list(range(len(tasks)))
            explicit = []
        first_call = len(commands)
        calls = self._enqueue_calls(tasks, now, commands)
        replies = await self._wire.exec(commands)
        raise_errors(replies)
        self._registered.update(queues)
        for chunk, reply in zip(calls, replies[first_call:], strict=True):
            for i, flag in zip(chunk, bytes(reply), strict=True):
                if flag == 49:  # b"1"
                    stored[i] = True
                    self._index.remember(tasks[i].id, tasks[i].queue)
        if explicit:
            await self._index.enqueue_claimed(tasks, explicit, stored, self._enqueue_calls)
        return stored

    async def enqueue_replacing(self, task: NewTask) -> ReplaceOutcome:
        """Store the task, or replace what its id holds, with one script on its queue
        (``scripts/replace.lua``); on a Redis Cluster the script runs under a claim of the id's
        index entry, as an explicit id's enqueue does (``IdIndex.replace_claimed``)."""
        self._check()
        k = self._queue_keys(task.queue)
        keys = [
            k.ready, k.sched, k.leases, k.seq, k.sl, k.pk, k.ck,
            k.done_s, k.done_f, k.done_c, k.fin_s, k.fin_f, k.fin_c,
        ]  # fmt: skip

        def call(kind: str) -> Command:
            args = [
                k.task, k.work, task.queue, self.prefix, task.id, kind, task.priority,
                repr(float(task.eta)), task.payload, task.options, repr(float(task.result_ttl)),
                task.concurrency_key or b"",
                b"" if task.concurrency_limit is None else task.concurrency_limit,
                task.function,
            ]  # fmt: skip
            return evalsha("replace", keys if self.cluster else [*keys, k.index + task.id], args)

        if task.queue not in self._registered:
            raise_errors(await self._wire.exec([("SADD", queues_key(self.prefix), task.queue)]))
            self._registered.add(task.queue)
        if self.cluster:
            flag = await self._index.replace_claimed(task, call)
        else:
            (reply,) = await self._wire.exec([call("0")])
            raise_errors([reply])
            flag = bytes(reply).decode()
        if flag != "Q":
            self._index.remember(task.id, task.queue)
        return _REPLACED[flag]

    def _enqueue_calls(
        self,
        tasks: Sequence[NewTask],
        indices: Sequence[int],
        commands: list[Command],
        kinds: dict[int, str] | None = None,
    ) -> list[list[int]]:
        """Append the enqueue script calls for ``tasks[i] for i in indices`` (one per queue and
        chunk) to ``commands``; return the task indices of each call. ``kinds`` gives the
        claim of each explicit id on a cluster."""
        groups: dict[str, list[int]] = {}
        for i in indices:
            groups.setdefault(tasks[i].queue, []).append(i)
        calls: list[list[int]] = []
        for queue, members in groups.items():
            k = self._queue_keys(queue)
            for start in range(0, len(members), _ENQUEUE_CHUNK):
                chunk = members[start : start + _ENQUEUE_CHUNK]
                calls.append(chunk)
                if not self.cluster:
                    commands.append(self._packed_enqueue(k, [tasks[i] for i in chunk]))
                    continue
                args: list[Any] = [k.task, k.work, queue, self.prefix]
                for i in chunk:
                    t = tasks[i]
                    args += [
                        t.id,
                        b"1" if kinds is None else kinds[i],
                        t.priority,
                        b"" if t.eta <= t.enqueued_at else repr(float(t.eta)),
                        t.payload,
                        t.options,
                        repr(float(t.result_ttl)),
                        t.concurrency_key or b"",
                        b"" if t.concurrency_limit is None else t.concurrency_limit,
                        t.function,
                    ]
                keys = [k.ready, k.sched, k.seq, k.done_s, k.done_f, k.done_c]
                commands.append(evalsha("enqueue", keys, args))
        return calls

    def _packed_enqueue(self, k: QueueKeys, chunk: Sequence[NewTask]) -> Raw:
        """The enqueue script call for a chunk of tasks of one standalone server's queue,
        encoded when it is sent."""
        sha = SCRIPTS["enqueue"].sha
        return Raw(functools.partial(encode_enqueue, sha, k, chunk), sha)

    async def _enqueue_one(self, t: NewTask) -> bool:
        # The common case on a standalone server, kept short: one task on a known queue, one
        # script call (which also checks and sets the id's index key).
        replies = await self._wire.exec([self._packed_enqueue(self._queue_keys(t.queue), (t,))])
        if isinstance(replies[0], Exception):
            raise_errors(replies)
        stored = bytes(replies[0]) == b"1"
        if stored:
            self._index.remember(t.id, t.queue)
        return stored

    async def claim(
        self, queues: Sequence[str], limit: int, worker_id: str, lease: float
    ) -> list[Claim]:
        """Take due tasks (expired leases first, then by priority, ETA and enqueue order) with
        one script per queue; several queues are looked at first, to take the best of all.
        A keyed task whose key is full is parked by the script, which goes on with the tasks
        behind it."""
        self._check()
        self._changes.mark_claim()
        if limit <= 0:
            return []
        if len(queues) == 1:
            claims, etas, _ = await self._claim_round({queues[0]: limit}, worker_id, lease, True)
            return claims
        claims = []
        etas = {}
        for _ in range(_CLAIM_ROUNDS):
            counts = await self._plan_claims(queues, limit - len(claims))
            if not counts:
                break
            got, got_etas, parked = await self._claim_round(counts, worker_id, lease, False)
            claims += got
            etas.update(got_etas)
            # Parked tasks have left `ready`: plan again to give their share to other tasks.
            if not parked or len(claims) >= limit:
                break
        # Each queue's claims are in order; put them in one order across the queues.
        claims.sort(key=lambda c: (-c.priority, etas[c.task_id]))
        return claims

    async def _claim_round(
        self, counts: dict[str, int], worker_id: str, lease: float, hint: bool
    ) -> tuple[list[Claim], dict[str, float], bool]:
        """One claim script per queue (``counts`` tasks each) in one round trip: the claims,
        their ETAs, and whether any script parked a task."""
        commands = []
        request = uuid.uuid4().hex
        for queue, n in counts.items():
            k = self._queue_keys(queue)
            commands.append(
                evalsha(
                    "claim",
                    [
                        k.ready,
                        k.sched,
                        k.leases,
                        k.seq,
                        f"{k.claims}{request}",
                        k.ck,
                        k.sl,
                        k.pk,
                        k.run,
                    ],
                    [k.task, n, repr(lease), worker_id, k.work, _MAX_PARK],
                )
            )
        # Safe to retry: a retry of a request that ran replays its claims (see scripts/claim.lua).
        replies = await self._wire.exec(commands)
        raise_errors(replies)
        claims: list[Claim] = []
        etas: dict[str, float] = {}
        due_at = math.inf
        parked = False
        for queue, reply in zip(counts, replies, strict=True):
            now = int(reply[0]) + int(reply[1]) / 1_000_000
            if reply[2]:
                due_at = min(due_at, float(reply[2]) - now)
            if reply[3]:
                parked = True
            for j in range(4, len(reply), 5):
                claim, etas[claim.task_id] = read_claim(queue, reply[j : j + 5], now)
                self._index.remember(claim.task_id, queue)
                claims.append(claim)
        if hint:
            self._due_hint = (tuple(counts), time.monotonic() + due_at)
        return claims, etas, parked

    async def _plan_claims(self, queues: Sequence[str], limit: int) -> dict[str, int]:
        commands = []
        for queue in queues:
            k = self._queue_keys(queue)
            commands.append(
                evalsha("peek", [k.ready, k.sched, k.leases, k.seq, k.sl], [k.task, limit])
            )
        replies = await self._wire.exec(commands)
        raise_errors(replies)
        counts: dict[str, int] = {}
        left = limit
        for queue, reply in zip(queues, replies, strict=True):
            take = min(int(reply[0]), left)
            if take:
                counts[queue] = take
                left -= take
        heads = sorted(
            (bytes(m)[:_RANK_LEN], queue)
            for queue, reply in zip(queues, replies, strict=True)
            for m in reply[1:]
        )
        for _, queue in heads[:left]:
            counts[queue] = counts.get(queue, 0) + 1
        return counts

    async def extend_lease(self, claims: Sequence[ClaimRef], lease: float) -> list[LeaseState]:
        """Extend current claims, one script per queue, in one round trip."""
        self._check()
        if not claims:
            return []
        where = await self._index.locate(c.task_id for c in claims)
        groups: dict[str, list[int]] = {}
        for i, ref in enumerate(claims):
            queue = where.get(ref.task_id)
            if queue is not None:
                groups.setdefault(queue, []).append(i)
        commands = []
        for queue, indices in groups.items():
            k = self._queue_keys(queue)
            args: list[Any] = [k.task, repr(lease)]
            for i in indices:
                args += [claims[i].task_id, claims[i].fencing_token]
            commands.append(evalsha("extend", [k.leases, k.ck, k.run], args))
        replies = await self._wire.exec(commands)
        raise_errors(replies)
        states = [LeaseState.LOST] * len(claims)
        for indices, reply in zip(groups.values(), replies, strict=True):
            for i, code in zip(indices, bytes(reply), strict=True):
                states[i] = LEASE_STATES[code - 48]
        return states

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply fenced settlements, one script per queue, in one round trip."""
        self._check()
        if not settlements:
            return []
        where = await self._index.locate(s.claim.task_id for s in settlements)
        groups: dict[str, list[int]] = {}
        for i, s in enumerate(settlements):
            queue = where.get(s.claim.task_id)
            if queue is not None:
                groups.setdefault(queue, []).append(i)
        commands = []
        request = uuid.uuid4().hex
        for queue, indices in groups.items():
            k = self._queue_keys(queue)
            args: list[Any] = [k.task, k.work, self._done_prefix]
            for i in indices:
                args += settle_args(settlements[i])
            commands.append(
                evalsha(
                    "settle",
                    [
                        k.ready,
                        k.sched,
                        k.leases,
                        k.seq,
                        k.done_s,
                        k.done_f,
                        k.done_c,
                        f"{k.settles}{request}",
                        k.ck,
                        k.sl,
                        k.pk,
                        k.run,
                        k.fin_s,
                        k.fin_f,
                        k.fin_c,
                    ],
                    args,
                )
            )
        replies = await self._wire.exec(commands)
        raise_errors(replies)
        applied = [False] * len(settlements)
        for indices, reply in zip(groups.values(), replies, strict=True):
            for i, flag in zip(indices, bytes(reply), strict=True):
                applied[i] = flag == 49  # b"1"
        for s in settlements:
            if isinstance(s, Finish):
                # A worker has no more use for the queue of a task it finished: without this,
                # every worker would hold the ids of its last 100,000 tasks (tens of MB).
                self._index.forget(s.claim.task_id)
        return applied

    async def cancel(self, task_id: str, now: float) -> CancelOutcome:
        """Cancel a pending task (it finishes as cancelled) or flag a running one."""
        self._check()
        hinted = self._index.hints.get(task_id)
        code = 0
        if hinted is not None:
            code = await self._cancel_in(hinted, task_id)
        if code == 0:
            # Not remembered, or remembered wrongly: ask the id index.
            self._index.forget(task_id)
            queue = await self._index.lookup(task_id)
            if queue is not None and queue != hinted:
                code = await self._cancel_in(queue, task_id)
        return (
            CancelOutcome.NOT_FOUND,
            CancelOutcome.CANCELLED,
            CancelOutcome.REQUESTED,
            CancelOutcome.ALREADY_FINISHED,
        )[code]

    async def _cancel_in(self, queue: str, task_id: str) -> int:
        k = self._queue_keys(queue)
        # Not retried: a cancel that ran twice would report "already finished".
        (reply,) = await self._wire.exec(
            [
                evalsha(
                    "cancel",
                    [k.ready, k.sched, k.done_c, k.ck, k.sl, k.pk, k.fin_c],
                    [k.task, task_id, self._done_prefix, k.work],
                )
            ],
            retry=False,
        )
        raise_errors([reply])
        return int(reply)

    async def get_task(self, task_id: str) -> TaskSnapshot | None:
        """Read the task's hash in its queue (remembered, else from the id index)."""
        self._check()
        hinted = self._index.hints.get(task_id)
        if hinted is not None:
            snap = await self._read(hinted, task_id)
            if snap is not None:
                return snap
            self._index.forget(task_id)
        queue = await self._index.lookup(task_id)
        if queue is None or queue == hinted:
            return None
        return await self._read(queue, task_id)

    async def _read(self, queue: str, task_id: str) -> TaskSnapshot | None:
        key = self._queue_keys(queue).task + task_id
        (row,) = await self._wire.exec([("HMGET", key, *SNAPSHOT_FIELDS)])
        raise_errors([row])
        return snapshot(task_id, queue, row)

    async def wait_for_result(self, task_id: str, timeout: float) -> TaskSnapshot | None:
        """Wait for the task's done message (pub/sub), with a bounded fallback poll."""
        deadline = time.monotonic() + timeout
        snap = await self.get_task(task_id)
        if snap is None or snap.status.is_final or timeout <= 0:
            return snap
        channel = self._done_prefix + task_id
        with self._waiters.watch(task_id) as arm:
            try:
                await self._listener.subscribe([channel], counted=True)
                return await wait_for_final(
                    lambda: self.get_task(task_id),
                    deadline - time.monotonic(),
                    arm=arm,
                    polls=Polls.every(self._poll_cap),
                    is_open=lambda: self.connected,
                )
            finally:
                await self._listener.unsubscribe(channel)

    async def wait_for_work(self, queues: Sequence[str], timeout: float) -> None:
        """Wait for a work message on the queues' channels, the next ETA or lease expiry (as
        the last claim reported it), or ``timeout``."""
        self._check()
        changed = self._changes.since_claim()
        hint, self._due_hint = self._due_hint, None
        channels = [self._queue_keys(q).work for q in queues]
        if await self._listener.subscribe(channels, counted=False):
            return  # newly listening: something may have come in before; claim again
        if hint is not None and hint[0] == tuple(queues):
            due_in = hint[1] - time.monotonic()
        else:
            due_in = await self._next_due(queues)
        timeout = min(timeout, max(due_in, 0.0), self._poll_cap())
        await wait_on(changed, timeout)

    async def _next_due(self, queues: Sequence[str]) -> float:
        commands = []
        for queue in queues:
            k = self._queue_keys(queue)
            commands.append(evalsha("next_due", [k.ready, k.sched, k.leases], []))
        replies = await self._wire.exec(commands)
        raise_errors(replies)
        due = math.inf
        for reply in replies:
            if reply[2]:
                now = int(reply[0]) + int(reply[1]) / 1_000_000
                due = min(due, float(reply[2]) - now)
        return due

    async def _queues(self) -> list[str]:
        (members,) = await self._wire.exec([("SMEMBERS", queues_key(self.prefix))])
        raise_errors([members])
        return sorted(bytes(m).decode() for m in members)

    async def purge_expired(self, now: float, limit: int = 10_000) -> int:
        """Trim up to ``limit`` expired results from the queues' done sets (their hashes have
        expired already) and drop their id index entries."""
        self._check()
        queues = await self._queues()
        removed: list[tuple[str, str]] = []
        left = limit
        for queue in queues:
            if left <= 0:
                break
            k = self._queue_keys(queue)
            (reply,) = await self._wire.exec(
                [
                    evalsha(
                        "purge", [k.done_s, k.done_f, k.done_c, k.fin_s, k.fin_f, k.fin_c], [left]
                    )
                ]
            )
            raise_errors([reply])
            removed += [(queue, bytes(i).decode()) for i in reply]
            left -= len(reply)
        if not removed:
            return len(removed)
        await self._index.unindex(removed, cluster=self.cluster)
        return len(removed)

    async def stats(self, now: float) -> list[QueueStats]:
        """Count tasks per queue and state (one script per queue, one round trip)."""
        self._check()
        queues = await self._queues()
        commands = []
        for queue in queues:
            k = self._queue_keys(queue)
            commands.append(
                evalsha(
                    "stats", [k.ready, k.sched, k.leases, k.done_s, k.done_f, k.done_c, k.ck], []
                )
            )
        replies = await self._wire.exec(commands)
        raise_errors(replies)
        out = []
        for queue, reply in zip(queues, replies, strict=True):
            counts = [int(x) for x in reply]
            if any(counts):
                out.append(QueueStats(queue, *counts))
        return out

    # -- inspection and operator actions ----------------------------------------------------

    async def list_tasks(
        self, status: TaskStatus, queue: str | None, limit: int, after: str | None, now: float
    ) -> SnapshotPage:
        """A page from each queue's listing index (pending: ``ready``, ``sl`` and ``pk``
        merged by rank; running: ``run``; finished: the status's ``fin`` set), one script per
        queue in one round trip, merged (see ``_listing``). Tasks stored before these
        indexes existed were entered in them when the store was migrated (see
        ``_migration``)."""
        self._check()
        queues = [queue] if queue is not None else await self._queues()
        if not queues or limit <= 0:
            return SnapshotPage([], None)
        scored = status is not TaskStatus.PENDING
        position, task_id = ("", "") if after is None else read_after(after, scored)
        cap = 2 * limit + 100
        commands = []
        for name in queues:
            k = self._queue_keys(name)
            if not scored:
                commands.append(
                    evalsha(
                        "list_pending",
                        [k.ready, k.sl, k.pk],
                        [k.task, limit, cap, position, *LIST_FIELDS],
                    )
                )
                continue
            index = {
                TaskStatus.RUNNING: k.run,
                TaskStatus.SUCCESS: k.fin_s,
                TaskStatus.FAILED: k.fin_f,
                TaskStatus.CANCELLED: k.fin_c,
            }[status]
            code = STATUS_CODE[status]
            commands.append(
                evalsha(
                    "list_scored",
                    [index],
                    [k.task, limit, cap, code, position, task_id, *LIST_FIELDS],
                )
            )
        replies = await self._wire.exec(commands)
        raise_errors(replies)
        pages = [queue_page(name, reply) for name, reply in zip(queues, replies, strict=True)]
        return merge_pages(pages, limit, scored)

    async def requeue(self, task_ids: Sequence[str], now: float) -> list[RequeueOutcome]:
        """One script per queue (named by the id index), in one round trip: each failed or
        cancelled task with its payload becomes pending with a new rank, atomically."""
        self._check()
        if not task_ids:
            return []
        where = await self._index.lookup_many(task_ids)
        groups: dict[str, list[int]] = {}
        for i, task_id in enumerate(task_ids):
            queue = where.get(task_id)
            if queue is not None:
                groups.setdefault(queue, []).append(i)
        commands = []
        for queue, indices in groups.items():
            k = self._queue_keys(queue)
            commands.append(
                evalsha(
                    "requeue_tasks",
                    [k.ready, k.sched, k.leases, k.seq, k.sl, k.done_f, k.done_c, k.fin_f, k.fin_c],
                    [k.task, k.work, *(task_ids[i] for i in indices)],
                )
            )
        # Not retried: a requeue that ran twice would report "refused" for what it requeued.
        replies = await self._wire.exec(commands, retry=False)
        raise_errors(replies)
        outcomes = [RequeueOutcome.NOT_FOUND] * len(task_ids)
        for (queue, indices), reply in zip(groups.items(), replies, strict=True):
            for i, code in zip(indices, bytes(reply), strict=True):
                outcomes[i] = _REQUEUE_OUTCOMES[code - 48]
                if code == 50:  # b"2"
                    self._index.remember(task_ids[i], queue)
        return outcomes

    async def purge_tasks(self, queue: str, status: TaskStatus, limit: int) -> int:
        """Delete up to ``limit`` tasks of the queue in ``status`` with one bounded script
        (never a running task), then drop their id index entries."""
        self._check()
        if status is TaskStatus.RUNNING or limit <= 0:
            return 0
        k = self._queue_keys(queue)
        keys = [k.ready, k.sched, k.sl, k.pk, k.ck]
        if status is TaskStatus.SUCCESS:
            keys += [k.done_s, k.fin_s]
        elif status is TaskStatus.FAILED:
            keys += [k.done_f, k.fin_f]
        elif status is TaskStatus.CANCELLED:
            keys += [k.done_c, k.fin_c]
        batch = min(limit, _PURGE_BATCH)
        while True:
            # Not retried: a purge that ran twice would delete more than it reports.
            (reply,) = await self._wire.exec(
                [
                    evalsha(
                        "purge_tasks", keys, [k.task, STATUS_CODE[status], batch, 2 * batch + 100]
                    )
                ],
                retry=False,
            )
            raise_errors([reply])
            removed = [(queue, bytes(i).decode()) for i in reply[2:]]
            if removed:
                await self._index.unindex(removed, cluster=self.cluster)
            deleted = int(reply[1])
            # Only stale entries were met: read on (each call removes what it looked at).
            if deleted or bytes(reply[0]) == b"0":
                return deleted

    async def save_progress(self, updates: Sequence[Progress]) -> None:
        """Store progress fenced by each claim's token, one script per queue, one round trip."""
        self._check()
        if not updates:
            return
        where = await self._index.locate(u.claim.task_id for u in updates)
        groups: dict[str, list[Progress]] = {}
        for update in updates:
            queue = where.get(update.claim.task_id)
            if queue is not None:
                groups.setdefault(queue, []).append(update)
        commands = []
        for queue, items in groups.items():
            k = self._queue_keys(queue)
            commands.append(evalsha("progress", [k.leases], [k.task, *progress_args(items)]))
        raise_errors(await self._wire.exec(commands))

    async def put_worker(self, record: WorkerRecord) -> None:
        """Set the worker's field of the worker records hash."""
        self._check()
        (reply,) = await self._wire.exec(
            [("HSET", self._workers, record.worker_id, worker_record(record))]
        )
        raise_errors([reply])

    async def remove_worker(self, worker_id: str) -> None:
        """Delete the worker's field of the worker records hash."""
        self._check()
        (reply,) = await self._wire.exec([("HDEL", self._workers, worker_id)])
        raise_errors([reply])

    async def list_workers(self, now: float) -> list[WorkerRecord]:
        """The unexpired records (one script, which deletes the expired ones)."""
        self._check()
        (reply,) = await self._wire.exec(
            [evalsha("workers_list", [self._workers], [repr(float(now))])]
        )
        raise_errors([reply])
        return workers(reply)

    # -- moving tasks between stores --------------------------------------------------------

    async def hold(self, queues: Sequence[str], limit: int, holder: str) -> list[HeldTask]:
        """Hold tasks for a move, one script per queue (see ``_move``)."""
        self._check()
        return await _move.hold(self, queues, limit, holder)

    async def put_stored(self, records: Sequence[StoredTask]) -> list[bool]:
        """Store moved tasks, one script per queue; an id still known is left alone."""
        self._check()
        return await _move.put_stored(self, records)

    async def drop_held(self, refs: Sequence[ClaimRef]) -> list[bool]:
        """Delete held tasks by their claims, one script per queue."""
        self._check()
        return await _move.drop_held(self, refs)

    # -- cron -------------------------------------------------------------------------------

    async def put_cron(self, name: str, definition: bytes, start: float) -> None:
        """Create the schedule at ``start``, or replace its definition keeping its last tick
        (one script on the crons hash)."""
        self._check()
        (reply,) = await self._wire.exec(
            [evalsha("cron_put", [self._crons], [name, definition, repr(float(start))])]
        )
        raise_errors([reply])

    async def delete_cron(self, name: str) -> bool:
        """Remove both fields of the schedule; ``True`` if it existed."""
        self._check()
        (reply,) = await self._wire.exec([("HDEL", self._crons, f"d:{name}", f"t:{name}")])
        raise_errors([reply])
        return int(reply) > 0

    async def list_crons(self) -> list[CronRecord]:
        """Every schedule, sorted by name, from one read of the crons hash."""
        self._check()
        (reply,) = await self._wire.exec([("HGETALL", self._crons)])
        raise_errors([reply])
        return crons(reply)

    async def advance_cron(self, name: str, expected: float, tick: float) -> bool:
        """Compare-and-set the schedule's last tick in one script; safe to retry."""
        self._check()
        (reply,) = await self._wire.exec(
            [
                evalsha(
                    "cron_advance",
                    [self._crons, f"{self._crons}:advance:{uuid.uuid4().hex}"],
                    [name, repr(float(expected)), repr(float(tick))],
                )
            ]
        )
        raise_errors([reply])
        return int(reply) == 1

    # -- locks ------------------------------------------------------------------------------

    def _lock_key(self, name: str) -> str:
        return f"{self.prefix}:lock:{name}"

    async def _lock_step(self, script: str, name: str, *args: Any) -> bool:
        self._check()
        (reply,) = await self._wire.exec([evalsha(script, [self._lock_key(name)], args)])
        raise_errors([reply])
        return int(reply) == 1

    async def acquire_lock(self, name: str, token: str, ttl: float) -> bool:
        """Take the lock if its key is absent (Redis drops it when the TTL runs out, on the
        server's clock): ``SET ... PX`` in a script, one round trip."""
        return await self._lock_step("lock_acquire", name, token, _millis(ttl))

    async def acquire_any_lock(
        self, names: Sequence[str], token: str, ttl: float
    ) -> tuple[str | None, float]:
        """Take the first free lock in one script over all their keys, one round trip; on a
        Redis Cluster, whose lock keys lie in many slots, one script per lock in turn until
        one is taken."""
        self._check()
        groups = [list(names)] if not self.cluster else [[name] for name in names]
        first = -1
        for group in groups:
            keys = [self._lock_key(name) for name in group]
            (reply,) = await self._wire.exec(
                [evalsha("lock_acquire_any", keys, (token, _millis(ttl)))]
            )
            raise_errors([reply])
            index, left = int(reply[0]), int(reply[1])
            if index > 0:
                return group[index - 1], 0.0
            first = left if first < 0 else min(first, left)
        return None, max(first, 0) / 1000

    async def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Reset the lock's TTL if ``token`` still holds it."""
        return await self._lock_step("lock_extend", name, token, _millis(ttl))

    async def release_lock(self, name: str, token: str) -> bool:
        """Delete the lock if ``token`` still holds it."""
        return await self._lock_step("lock_release", name, token)


# sitq's own options of RedisBackend that a URL's query may carry, with the constructor's
# defaults: a value that differs from its default was given as an argument.
_URL_DEFAULTS: dict[str, Any] = {
    name: param.default
    for name, param in inspect.signature(RedisBackend.__init__).parameters.items()
    if name in _URL_OPTIONS
}
