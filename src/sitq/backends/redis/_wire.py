"""The Redis backend's requests to the server: commands encoded in RESP by hand on a standalone
server (sitq only sends bytes, str, int and float, so this costs a fraction of redis-py's general
encoder), the enqueue script call encoded in one pass, one pipelined round trip on a connection,
and ``Wire``, which holds the client and its connections, runs each call's commands in one
round trip (through redis-py's cluster client on a Redis Cluster), reloads the scripts after
``NOSCRIPT``, retries what failed on the way, maps errors, and lets calls beyond
``max_connections`` wait together in one batch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sitq.backends.redis._keys import QueueKeys
from sitq.backends.redis._scripts import SCRIPTS, script_for
from sitq.errors import BackendError, ConfigurationError
from sitq.models import NewTask

# Calls that wait for a connection share a round trip, up to about this many commands.
BATCH_COMMANDS = 1000


@dataclass(frozen=True, slots=True)
class Raw:
    """A command encoded in RESP by ``encode`` (called when it is sent, so that the server can
    run the previous commands meanwhile); ``sha`` names the script it calls, if any."""

    encode: Callable[[], bytes]
    sha: str | None = None


# The ten arguments of one task for the enqueue script, in RESP.
_TASK_RESP = (
    b"$%d\r\n%b\r\n$1\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
    b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
)


Command = tuple[Any, ...] | Raw


def sha_of(command: Command) -> Any:
    """The SHA1 of the script an EVALSHA command calls."""
    return command.sha if isinstance(command, Raw) else command[1]


def pack(commands: Sequence[Command]) -> bytes:
    """Commands in the Redis protocol (RESP). sitq only sends bytes, str, int and float, so
    this is several times cheaper than redis-py's general encoder."""
    buf = bytearray()
    for command in commands:
        if isinstance(command, Raw):
            buf += command.encode()
            continue
        buf += b"*%d\r\n" % len(command)
        for arg in command:
            kind = type(arg)
            if kind is bytes:
                data = arg
            elif kind is str:
                data = arg.encode()
            elif kind is int:
                data = b"%d" % arg
            elif kind is float:
                data = repr(arg).encode()
            elif isinstance(arg, str):  # a subclass, as sitq.TaskId: the same text
                data = str.encode(arg)
            else:  # pragma: no cover - a programming error
                raise TypeError(f"cannot send {arg!r} to Redis")
            buf += b"$%d\r\n%b\r\n" % (len(data), data)
    return bytes(buf)


@functools.lru_cache(maxsize=256)
def enqueue_head(sha: str, k: QueueKeys, queue: str) -> tuple[bytes, bytes, bytes]:
    """The fixed parts of a queue's enqueue script call, in RESP: ``EVALSHA`` and the script,
    the six queue keys, and the four leading arguments."""
    return (
        pack([("EVALSHA", sha)]).split(b"\r\n", 1)[1],
        pack([(k.ready, k.sched, k.seq, k.done_s, k.done_f, k.done_c)]).split(b"\r\n", 1)[1],
        pack([(k.task, k.work, queue, k.prefix)]).split(b"\r\n", 1)[1],
    )


def encode_enqueue(sha: str, k: QueueKeys, chunk: Sequence[NewTask]) -> bytes:
    """The enqueue script call for a chunk of tasks of one queue on a standalone server, in
    RESP, encoded in one pass (encoding the arguments one by one took most of an enqueue's
    client time), with each task's id index key for the script to set (or, for an explicit
    id, to check and set)."""
    call, keys, argv = enqueue_head(sha, k, chunk[0].queue)
    nkeys = 6 + len(chunk)
    nk = b"%d" % nkeys
    parts = [b"*%d\r\n" % (2 + 1 + nkeys + 4 + 10 * len(chunk)), call]
    parts += [b"$%d\r\n%b\r\n" % (len(nk), nk), keys]
    for t in chunk:
        key = (k.index + t.id).encode()
        parts.append(b"$%d\r\n%b\r\n" % (len(key), key))
    parts.append(argv)
    texts: dict[Any, bytes] = {}
    for t in chunk:
        tid = t.id.encode()
        pri = b"%d" % t.priority
        eta = b"" if t.eta <= t.enqueued_at else repr(float(t.eta)).encode()
        options = texts.get(t.options)
        if options is None:
            options = texts[t.options] = t.options.encode()
        ttl = texts.get(t.result_ttl)
        if ttl is None:
            ttl = texts[t.result_ttl] = repr(float(t.result_ttl)).encode()
        ckey = t.concurrency_key.encode() if t.concurrency_key else b""
        climit = b"" if t.concurrency_limit is None else b"%d" % t.concurrency_limit
        function = texts.get(t.function)
        if function is None:
            function = texts[t.function] = t.function.encode()
        payload = t.payload
        parts.append(
            _TASK_RESP
            % (
                len(tid),
                tid,
                b"1" if t.fresh_id else b"0",
                len(pri),
                pri,
                len(eta),
                eta,
                len(payload),
                payload,
                len(options),
                options,
                len(ttl),
                ttl,
                len(ckey),
                ckey,
                len(climit),
                climit,
                len(function),
                function,
            )
        )
    return b"".join(parts)


@dataclass(slots=True)
class Batch:
    """Calls that found every connection busy: their commands, sent together in one round
    trip, and each caller's slice of the replies."""

    commands: list[Command] = dataclasses.field(default_factory=list)
    waiters: list[tuple[int, int, asyncio.Future[list[Any]]]] = dataclasses.field(
        default_factory=list
    )


async def roundtrip(
    conn: Any, response_error: type[Exception], commands: Sequence[Command]
) -> list[Any]:
    """Send commands pipelined on a redis-py connection and read their replies (an error reply
    as a ``response_error`` object in its place)."""
    # Sent in pieces of about 16 KiB: the server works on the first while later ones are
    # encoded.
    start = 0
    size = 0
    for i, command in enumerate(commands):
        size += 16_384 if isinstance(command, Raw) else 64
        if size >= 16_384 and i + 1 < len(commands):
            await conn.send_packed_command(pack(commands[start : i + 1]), check_health=False)
            start, size = i + 1, 0
    await conn.send_packed_command(pack(commands[start:]), check_health=False)
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(await conn.read_response())
        except response_error as exc:
            replies.append(exc)
    return replies


def raise_errors(replies: Sequence[Any]) -> None:
    """Raise the first error reply (an exception object in its place) as a BackendError."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise BackendError(f"Redis: {type(reply).__name__}: {reply}") from reply


_NOT_CONNECTED = "RedisBackend is not connected: call `await backend.connect()`"
_CLOSED_WHILE_WAITING = "RedisBackend was closed while the call waited"


class Wire:
    """The backend's calls to the server, each a list of commands in one round trip.

    Standalone servers are reached through one pooled connection kept for whoever comes first
    (the commands of a call are pipelined on it, encoded by ``pack``); concurrent callers use
    the rest of the pool. On a Redis Cluster redis-py's ``RedisCluster`` routes each command to
    its slot's node. At most ``max_connections`` calls are in flight (one per connection, per
    node); calls beyond that wait, and while they wait they join one batch whose commands go
    out pipelined together on the next connection that frees up.
    """

    def __init__(
        self,
        *,
        cluster: bool,
        connect_timeout: float,
        command_timeout: float,
        max_connections: int,
        describe: Callable[[], str],
    ) -> None:
        self._exc: Any = importlib.import_module("redis.exceptions")
        self.cluster = cluster
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.max_connections = max_connections
        self._describe = describe
        self.client: Any = None
        self._pool: Any = None
        self._direct: Any = None
        self._direct_busy = False
        # Calls in flight, at most one per connection; the rest wait here (set by open()).
        self._slots: asyncio.Semaphore | None = None
        self._batch: Batch | None = None
        self._batch_tasks: set[asyncio.Task[None]] = set()

    def errors(self) -> tuple[type[BaseException], ...]:
        """What a call to the server may raise."""
        return (self._exc.RedisError, self._exc.RedisClusterException, OSError, TimeoutError)

    def transient(self) -> tuple[type[BaseException], ...]:
        """The failures of the connection, which a call may retry."""
        return (self._exc.ConnectionError, self._exc.TimeoutError, OSError, TimeoutError)

    def client_options(self) -> dict[str, Any]:
        """redis-py's client options for these calls."""
        retry_mod = importlib.import_module("redis.asyncio.retry")
        backoff = importlib.import_module("redis.backoff")
        # sitq retries what is safe to retry itself (a claim is not): redis-py must not.
        return {
            "decode_responses": False,
            "retry": retry_mod.Retry(backoff.NoBackoff(), 0),
            "socket_timeout": None,
            "socket_connect_timeout": self.connect_timeout,
            # RESP2 replies parse faster in redis-py's pure-Python parser.
            "protocol": 2,
            "health_check_interval": 0,
            # Calls wait for one of max_connections (see _call) instead of failing; beyond
            # them, the pub/sub connection (and its successor while it is replaced).
            "max_connections": self.max_connections + 2,
        }

    async def open(self, client: Any) -> None:
        """Reach the server through ``client`` and load the Lua scripts into its script cache;
        then take calls. ``client`` is closed if that fails."""
        try:
            async with asyncio.timeout(self.connect_timeout + self.command_timeout):
                if self.cluster:
                    await client.initialize()
                else:
                    await client.ping()
                for script in SCRIPTS.values():
                    await client.script_load(script.source)
        except TypeError as exc:  # an unknown URL parameter reaches the connection class
            with contextlib.suppress(Exception):
                await client.aclose()
            raise ConfigurationError(
                f"invalid Redis settings for {self._describe()}: {exc}"
            ) from exc
        except self.errors() as exc:
            with contextlib.suppress(Exception):
                await client.aclose()
            raise BackendError(
                f"cannot connect to Redis at {self._describe()}: {type(exc).__name__}: {exc}"
            ) from exc
        self.client = client
        self._slots = asyncio.Semaphore(self.max_connections)
        if not self.cluster:
            self._pool = client.connection_pool
            try:
                self._direct = await self._pool.get_connection()
            except self.errors():
                self._direct = None

    def detach(self) -> Any:
        """Take no more calls; return the client for ``shutdown``."""
        client, self.client = self.client, None
        return client

    def abandon(self) -> None:
        """Drop the client, its connections and the calls waiting in a batch without any I/O
        (their event loop has ended and can no longer run them); ``open`` starts afresh."""
        self.client = None
        self._pool = None
        self._direct = None
        self._direct_busy = False
        self._slots = None
        self._batch = None
        self._batch_tasks = set()

    async def shutdown(self, client: Any) -> None:
        """End the calls still waiting in a batch and close ``client`` (from ``detach``)."""
        batches = list(self._batch_tasks)
        for batch_task in batches:
            batch_task.cancel()
        if batches:
            await asyncio.gather(*batches, return_exceptions=True)
        if client is None:
            return
        direct, self._direct = self._direct, None
        pool, self._pool = self._pool, None
        if direct is not None and pool is not None:
            with contextlib.suppress(Exception):
                await pool.release(direct)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), 10)

    async def exec(self, commands: Sequence[Command], *, retry: bool = True) -> list[Any]:
        """Run commands in one round trip; return their replies (error replies as exception
        objects). Connection failures are retried (if ``retry``) and then raise BackendError."""
        if self.client is None or self._slots is None:
            raise BackendError(_NOT_CONNECTED)
        if not commands:
            return []
        attempts = 3 if retry else 1
        for attempt in range(attempts):
            try:
                return await self._call(commands)
            except self.transient() as exc:
                if attempt + 1 >= attempts or self.client is None:
                    raise BackendError(
                        f"Redis at {self._describe()}: {type(exc).__name__}: {exc}"
                    ) from exc
                await asyncio.sleep(0.02 * 2**attempt)
            except self.errors() as exc:
                raise BackendError(f"Redis: {type(exc).__name__}: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call(self, commands: Sequence[Command]) -> list[Any]:
        """One attempt of ``exec``. At most ``max_connections`` round trips are in flight,
        one per connection; a call that finds them all busy joins the open batch, whose
        commands go out together, pipelined on the next connection that frees up (waiting
        for it does not count against ``command_timeout``)."""
        slots = self._slots
        if slots is None:
            raise BackendError(_NOT_CONNECTED)
        if not slots.locked():
            async with slots, asyncio.timeout(self.command_timeout):
                return await self._run(commands)
        batch = self._batch
        if batch is None or len(batch.commands) >= BATCH_COMMANDS:
            batch = self._batch = Batch()
            task = asyncio.create_task(self._run_batch(batch), name="sitq-redis-batch")
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        start = len(batch.commands)
        batch.commands += commands
        batch.waiters.append((start, len(batch.commands), future))
        return await future

    async def _run_batch(self, batch: Batch) -> None:
        """Wait for a connection, close the batch to newcomers, run its commands in one round
        trip and hand each caller its replies (or the error)."""
        outcome: list[Any] | BaseException
        try:
            slots = self._slots
            if slots is None:
                raise BackendError(_CLOSED_WHILE_WAITING)
            async with slots:
                if self._batch is batch:
                    self._batch = None
                if self.client is None:
                    raise BackendError(_CLOSED_WHILE_WAITING)
                async with asyncio.timeout(self.command_timeout):
                    outcome = await self._run(batch.commands)
        except asyncio.CancelledError:
            outcome = BackendError(_CLOSED_WHILE_WAITING)
        except Exception as exc:
            outcome = exc
        finally:
            if self._batch is batch:
                self._batch = None
        for start, end, future in batch.waiters:
            if future.done():  # the caller was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome[start:end])

    async def _run(self, commands: Sequence[Command]) -> list[Any]:
        if self.cluster:
            return await self._run_cluster(commands)
        return await self._run_direct(commands)

    async def _run_direct(self, commands: Sequence[Command]) -> list[Any]:
        pool = self._pool
        if pool is None:
            raise BackendError(_NOT_CONNECTED)
        direct = self._direct
        use_direct = direct is not None and not self._direct_busy
        if use_direct:
            conn = direct
            self._direct_busy = True
        else:
            conn = await pool.get_connection()
        try:
            if use_direct:
                await pool.ensure_connection(conn)
            replies = await roundtrip(conn, self._exc.ResponseError, commands)
            missing = [i for i, r in enumerate(replies) if isinstance(r, self._exc.NoScriptError)]
            if missing:
                # The server lost its script cache (SCRIPT FLUSH, restart, failover): load the
                # scripts and run again what did not run.
                scripts = {sha_of(commands[i]) for i in missing}
                await roundtrip(
                    conn,
                    self._exc.ResponseError,
                    [("SCRIPT", "LOAD", script_for(sha).source) for sha in scripts],
                )
                again = await roundtrip(
                    conn, self._exc.ResponseError, [commands[i] for i in missing]
                )
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
            return replies
        except BaseException:
            # A command may be half sent or its reply unread: the connection is unusable.
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        finally:
            if use_direct:
                self._direct_busy = False
            else:
                with contextlib.suppress(Exception):
                    await pool.release(conn)

    async def _run_cluster(self, commands: Sequence[Command]) -> list[Any]:
        client = self.client
        replies = await self._cluster_once(client, commands)
        missing = [i for i, r in enumerate(replies) if isinstance(r, self._exc.NoScriptError)]
        if missing:
            for sha in {sha_of(commands[i]) for i in missing}:
                await client.script_load(script_for(sha).source)
            again = await self._cluster_once(client, [commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _cluster_once(self, client: Any, commands: Sequence[Command]) -> list[Any]:
        plain: list[tuple[Any, ...]] = []
        for command in commands:
            if isinstance(command, Raw):  # pragma: no cover - a programming error
                raise TypeError("pre-encoded commands are for standalone servers only")
            plain.append(command)
        if len(plain) == 1:
            try:
                return [await client.execute_command(*plain[0])]
            except self._exc.ResponseError as exc:
                return [exc]
        pipe = client.pipeline(transaction=False)
        for command in plain:
            pipe.execute_command(*command)
        return list(await pipe.execute(raise_on_error=False))
