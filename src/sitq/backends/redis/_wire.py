"""The Redis protocol as sitq speaks it on a standalone server: commands encoded in RESP by
hand (sitq only sends bytes, str, int and float, so this costs a fraction of redis-py's general
encoder), the enqueue script call encoded in one pass, and one pipelined round trip on a
connection."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sitq.backends.redis._keys import QueueKeys
from sitq.models import NewTask

# Calls that wait for a connection share a round trip, up to about this many commands.
BATCH_COMMANDS = 1000


@dataclass(frozen=True, slots=True)
class Raw:
    """A command encoded in RESP by ``encode`` (called when it is sent, so that the server can
    run the previous commands meanwhile); ``sha`` names the script it calls, if any."""

    encode: Callable[[], bytes]
    sha: str | None = None


# The nine arguments of one task for the enqueue script, in RESP.
_TASK_RESP = (
    b"$%d\r\n%b\r\n$1\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
    b"$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
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
    parts = [b"*%d\r\n" % (2 + 1 + nkeys + 4 + 9 * len(chunk)), call]
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
