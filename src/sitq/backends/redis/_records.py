"""The Redis backend's records as its scripts store and return them: a task's hash read back as
a snapshot (alone, or as a row of a listing page), a claim script's reply read as claims (a
damaged task as a claim that names what is wrong), settlements, progress and optional values
written as script arguments, listing positions, worker records and the crons hash."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from sitq.backends.base import STATUS_CODE
from sitq.errors import ConfigurationError
from sitq.models import (
    Claim,
    CronRecord,
    Finish,
    LeaseState,
    Progress,
    Release,
    Reschedule,
    Settlement,
    TaskSnapshot,
    TaskStatus,
    WorkerRecord,
)

__all__ = [
    "LEASE_STATES",
    "LIST_FIELDS",
    "SNAPSHOT_FIELDS",
    "crons",
    "opt",
    "page_rows",
    "progress_args",
    "read_after",
    "read_claim",
    "settle_args",
    "snapshot",
    "unreadable_claim",
    "worker_record",
    "workers",
]

_STATUS_CODE = {status: b"%d" % code for status, code in STATUS_CODE.items()}
_CODE_STATUS = {v: k for k, v in _STATUS_CODE.items()}
# The extend script's answer per claim, a digit: its index here.
LEASE_STATES = (LeaseState.LOST, LeaseState.HELD, LeaseState.CANCEL_REQUESTED)
# The fields of a task's hash that a listing row reads, in the order ``snapshot`` takes them:
# status, attempts, enqueued/due/started/finished at, error, traceback, function, priority,
# progress and its message, worker id. A snapshot reads the value too.
LIST_FIELDS = ("st", "att", "enq", "eta", "sa", "fa", "err", "tb", "fn", "pri", "pg", "pm", "wid")
SNAPSHOT_FIELDS = (*LIST_FIELDS, "v")


def opt(value: bytes | str | None) -> bytes:
    """An optional value for a script: ``b""`` for ``None``, else ``b"="`` and the data."""
    if value is None:
        return b""
    if isinstance(value, str):
        value = value.encode()
    return b"=" + value


def _text(value: Any) -> str | None:
    return None if value is None else bytes(value).decode()


def _float(value: Any) -> float | None:
    return None if value is None else _stamp(value)


def _stamp(value: Any) -> float:
    """A stored timestamp; NaN where a damaged record holds something else."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def snapshot(task_id: str, queue: str, row: Sequence[Any]) -> TaskSnapshot | None:
    """The task from its hash's ``SNAPSHOT_FIELDS``, or ``LIST_FIELDS`` (no value); ``None``
    if the hash does not exist. A task stored before functions were kept has ``""``; the
    worker and progress are reported only while the task runs."""
    if row[0] is None:
        return None
    status = _CODE_STATUS[bytes(row[0])]
    running = status is TaskStatus.RUNNING
    value = row[13] if len(row) > 13 else None
    return TaskSnapshot(
        task_id=task_id,
        queue=queue,
        status=status,
        attempts=int(row[1] or 0),
        enqueued_at=_stamp(row[2]),
        eta=_stamp(row[3]),
        started_at=_float(row[4]),
        finished_at=_float(row[5]),
        value=None if value is None else bytes(value),
        error=_text(row[6]),
        traceback=_text(row[7]),
        function=_text(row[8]) or "",
        priority=_int(row[9]),
        progress=_float(row[10]) if running else None,
        progress_message=_text(row[11]) if running else None,
        worker_id=_text(row[12]) if running else None,
    )


def page_rows(reply: Sequence[Any]) -> list[tuple[bytes, str, Sequence[Any]]]:
    """The rows of a listing script's reply after its first element: each task's position
    (a rank, or a score), id and ``LIST_FIELDS`` as they came (read into a snapshot only for
    the rows a page keeps); a task whose hash is gone is left out."""
    width = 2 + len(LIST_FIELDS)
    rows = []
    for j in range(1, len(reply), width):
        fields = reply[j + 2 : j + width]
        if fields[0] is not None:
            rows.append((bytes(reply[j]), bytes(reply[j + 1]).decode(), fields))
    return rows


def read_after(after: str, scored: bool) -> tuple[str, str]:
    """A listing position as the scripts take it: a pending rank (and ``""``), or the score
    and id of a scored listing."""
    if not scored:
        if len(after) < 35:
            raise ConfigurationError(f"not a position of a pending listing: {after!r}")
        return after, ""
    score, _, task_id = after.partition(" ")
    try:
        float(score)
    except ValueError:
        raise ConfigurationError(f"not a position of this listing: {after!r}") from None
    return score, task_id


def read_claim(queue: str, raw: Sequence[Any], now: float) -> tuple[Claim, float]:
    """One claim of a claim script's reply (id, payload, options, the fields ``<fence>
    <attempts> <priority> <retries> <enqueued_at> <result_ttl> <cancel> <eta>``, and the
    function) and its ETA; a damaged task gives ``unreadable_claim`` (at ETA 0)."""
    task_id = raw[0].decode()
    function = bytes(raw[4]).decode(errors="replace")
    try:
        fence, att, pri, ret, enq, ttl, cancel, eta = raw[3].split()
        claim = Claim(
            task_id=task_id,
            queue=queue,
            payload=raw[1],
            options=raw[2].decode(),
            priority=int(pri),
            fencing_token=int(fence),
            attempts=int(att),
            retries=int(ret),
            enqueued_at=float(enq),
            started_at=now,
            result_ttl=float(ttl),
            cancel_requested=cancel == b"1",
            function=function,
        )
        return claim, float(eta)
    except (ValueError, AttributeError, UnicodeDecodeError):
        return unreadable_claim(task_id, queue, raw[1:4], now), 0.0


_CLAIM_FIELDS: tuple[tuple[str, Callable[[bytes], float]], ...] = (
    ("attempts", int),
    ("priority", int),
    ("retries", int),
    ("enqueued_at", float),
    ("result_ttl", float),
    ("cancel", float),
    ("eta", float),
)


def unreadable_claim(task_id: str, queue: str, raw: Sequence[Any], now: float) -> Claim:
    """The claim of a task whose hash the claim script found damaged (a field missing, not a
    number, or a fencing token it had to replace, marked ``?``), naming what is wrong, so that
    the worker fails that task instead of the whole claim failing."""
    payload, options, fields = raw
    tokens = bytes(fields).split(b" ")
    problems = []
    if tokens[0].startswith(b"?"):
        problems.append("the fencing token was not an integer")
    fence = int(tokens[0].lstrip(b"?"))  # the script always hands out an integer token
    if len(tokens) != 8:
        problems.append("its fields cannot be read")
    values = tokens[1:] if len(tokens) == 8 else []
    for (name, kind), text in zip(_CLAIM_FIELDS, values, strict=False):
        try:
            kind(text)
        except ValueError:
            shown = "missing or not a number" if text == b"?" else f"{text!r}, not a number"
            problems.append(f"{name} is {shown}")
    if payload is None:
        problems.append("the payload is missing")
    if options is None:
        problems.append("the options are missing")
    else:
        try:
            bytes(options).decode()
        except UnicodeDecodeError:
            problems.append("the options are not text")
    return Claim(
        task_id=task_id,
        queue=queue,
        payload=b"" if payload is None else bytes(payload),
        options="",
        priority=0,
        fencing_token=fence,
        attempts=1,
        retries=0,
        enqueued_at=math.nan,
        started_at=now,
        result_ttl=math.nan,
        corrupt="; ".join(problems) or "its fields cannot be read",
    )


def settle_args(s: Settlement) -> list[Any]:
    """One settlement's arguments for the settle script: its kind (``F``inish,
    ``R``eschedule, re``L``ease, ``D``elayed release), the task id and fencing token, then
    what the kind needs."""
    ref = s.claim
    if isinstance(s, Finish):
        return [
            b"F",
            ref.task_id,
            ref.fencing_token,
            _STATUS_CODE[s.status],
            opt(s.value),
            opt(s.error),
            opt(s.traceback),
            repr(max(s.expires_at - s.finished_at, 0.001)),
        ]
    if isinstance(s, Reschedule):
        return [
            b"R",
            ref.task_id,
            ref.fencing_token,
            repr(float(s.eta)),
            opt(s.error),
            opt(s.traceback),
        ]
    if isinstance(s, Release) and s.delay > 0:
        return [b"D", ref.task_id, ref.fencing_token, repr(float(s.delay))]
    if isinstance(s, Release):
        return [b"L", ref.task_id, ref.fencing_token]
    raise TypeError(f"not a settlement: {s!r}")  # pragma: no cover


def progress_args(updates: Sequence[Progress]) -> list[Any]:
    """The progress script's arguments for updates of one queue: id, fencing token, progress,
    optional message, per update."""
    args: list[Any] = []
    for u in updates:
        args += [u.claim.task_id, u.claim.fencing_token, repr(float(u.value)), opt(u.message)]
    return args


def worker_record(record: WorkerRecord) -> bytes:
    """A worker record as its hash field holds it: ``<expires_at> <data>``."""
    return repr(float(record.expires_at)).encode() + b" " + record.data


def workers(reply: Sequence[Any]) -> list[WorkerRecord]:
    """The worker records of the workers script's reply, sorted by worker id."""
    out = []
    for field, value in zip(reply[::2], reply[1::2], strict=True):
        expires, _, data = bytes(value).partition(b" ")
        out.append(WorkerRecord(bytes(field).decode(), data, float(expires)))
    return sorted(out, key=lambda r: r.worker_id)


def crons(reply: Any) -> list[CronRecord]:
    """Every schedule in the crons hash (``d:<name>`` its definition, ``t:<name>`` its last
    tick), sorted by name."""
    # redis-py's cluster client turns the flat reply into a dict; the direct path does not.
    pairs = (
        list(reply.items())
        if isinstance(reply, dict)
        else list(zip(reply[::2], reply[1::2], strict=True))
    )
    definitions: dict[str, bytes] = {}
    ticks: dict[str, float] = {}
    for field, value in pairs:
        kind, name = bytes(field).decode().split(":", 1)
        if kind == "d":
            definitions[name] = bytes(value)
        else:
            ticks[name] = float(value)
    return [
        CronRecord(name, definitions[name], ticks[name])
        for name in sorted(definitions)
        if name in ticks
    ]
