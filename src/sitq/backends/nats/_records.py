"""The records of the NATS backend's key-value bucket (described in ``backend``), defined in
one place: the short field names of a task record and of sitq's own records, how a record is
encoded, checked and changed, and the bucket keys they live under.

A record is a JSON object, followed by a newline and a tail when there is one (a task's result
value, a cron schedule's definition). A task record's first field is always its state, which
result waiters look at without decoding it. The work
message of a task is its first record plus the engine's options and, when known, the record's
revision, followed by the payload.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from sitq.models import Claim, Finish, NewTask, Reschedule, TaskSnapshot, TaskStatus

# -- task record fields --------------------------------------------------------------------
STATE: Final = "s"
"""``TaskStatus`` value; always the first field."""
TASK_ID: Final = "id"
QUEUE: Final = "q"
PRIORITY: Final = "p"
GENERATION: Final = "g"
"""A token unique to one life of a task id, shared by its record and its message."""
ETA: Final = "eta"
ENQUEUED_AT: Final = "enq"
RESULT_TTL: Final = "ttl"
ATTEMPTS: Final = "a"
RETRIES: Final = "r"
FENCE: Final = "f"
"""The fencing token of the current claim: the record revision that claim replaced."""
LEASE_UNTIL: Final = "lu"
WORKER: Final = "w"
STARTED_AT: Final = "st"
CANCEL_REQUESTED: Final = "c"
CONCURRENCY_KEY: Final = "ck"
CONCURRENCY_LIMIT: Final = "cl"
FINISHED_AT: Final = "fin"
EXPIRES_AT: Final = "exp"
ERROR: Final = "e"
TRACEBACK: Final = "tb"
HAS_VALUE: Final = "hv"
"""True when the result value follows the JSON head."""
HAS_PAYLOAD: Final = "hp"
"""True when the task's payload follows the JSON head (pending, failed and cancelled records;
a running record leaves it to the work message and its claim's holder)."""
FUNCTION: Final = "fn"
"""The callable's ``module.qualname`` as enqueued (for listings)."""
PROGRESS: Final = "pg"
PROGRESS_MESSAGE: Final = "pm"
LIST_TOKEN: Final = "lt"
"""The token of the task's listing entry: an entry names its record by key and token, and stands
for the task only while the record still holds that token in that state (see ``_listing``)."""
LIST_SEQ: Final = "ix"
"""The stream sequence of the task's listing entry, when the writer knew it (so that the next
change of state deletes that entry)."""
VALUE: Final = "_value"
"""In memory only: the result value, written as the record's tail (see ``split``)."""
RUNNING_FIELDS: Final = (
    LEASE_UNTIL,
    WORKER,
    CANCEL_REQUESTED,
    HAS_VALUE,
    PROGRESS,
    PROGRESS_MESSAGE,
    LIST_SEQ,
)
"""Fields of a running claim, dropped when it settles."""
WAITING_FIELDS: Final = ("o", HAS_PAYLOAD, LIST_SEQ, PROGRESS, PROGRESS_MESSAGE)
"""Fields of a waiting (pending) record that a claim drops: the options and payload stay with
the work message and the claim's holder."""

# -- work message fields (besides the first record's) ----------------------------------------
OPTIONS: Final = "o"
"""The engine's options: in the work message, and in records that keep the payload."""
REVISION: Final = "rev"

# -- sitq's own records ----------------------------------------------------------------------
NAME: Final = "n"
"""Cron and lock records: the name."""
CRON_TICK: Final = "t"
"""Cron record: ``last_tick`` (the definition is the tail)."""
CRON_NAMES: Final = "names"
"""The cron index: the names of the schedules."""
LOCK_TOKEN: Final = "tok"
LOCK_TTL: Final = "ttl"
HOLDERS: Final = "h"
"""Slots record: its holders (see ``_slots``)."""
INDEX_EXPIRES: Final = "exp"
"""Expiry index message: the latest expiry among its entries."""
INDEX_KEYS: Final = "keys"
"""Expiry index message: ``[task key, revision, expires_at, listing entry]`` per finished
record (the listing entry's sequence, 0 if unknown; older messages have three fields)."""
ENTRY_KEY: Final = "k"
"""Listing entry: the task's bucket key."""
ENTRY_TOKEN: Final = "t"
"""Listing entry: the record's ``LIST_TOKEN`` when the entry was written."""
WORKER_ID: Final = "id"
"""Worker entry: the worker's id (its data is the tail)."""
WORKER_EXPIRES: Final = "exp"
"""Worker entry: when it expires."""

CRON_INDEX: Final = "_.crons"
"""The bucket key of the index of cron schedule names."""
FORMAT_KEY: Final = "_.format"
"""The bucket key of the store's format marker: ``{FORMAT_VERSION: n}`` once every record
written before format ``n`` has been brought up to it (see ``_migrate``)."""
FORMAT_VERSION: Final = "v"
FORMAT: Final = 2
"""The current format: 2 lists every task (a listing entry per record, ``LIST_TOKEN`` and
``LIST_SEQ`` in the record); 1, without a marker, had no listing index."""

FINAL = {s.value for s in TaskStatus if s.is_final}
_STATES = {s.value for s in TaskStatus}
_PLAIN_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")

UNFINISHED = (b'{"%s":"pending"' % STATE.encode(), b'{"%s":"running"' % STATE.encode())
"""How the encoding of a record that is not final begins."""


def task_key(task_id: str) -> str:
    """The bucket key of a task id: the id itself, or ``=`` and its base64url form."""
    if _PLAIN_ID.fullmatch(task_id):
        return task_id
    return "=" + base64.urlsafe_b64encode(task_id.encode()).decode().rstrip("=")


def cron_key(name: str) -> str:
    """The bucket key of a cron schedule."""
    return "_.cron." + task_key(name)


def lock_key(name: str) -> str:
    """The bucket key of a lock."""
    return "_.lock." + task_key(name)


def expiry_class(ttl: float) -> str:
    """The expiry-index class of a ``result_ttl``: milliseconds below 10 s, else 10 s steps."""
    if ttl < 10:
        return f"{max(int(ttl * 1000), 0)}ms"
    if ttl >= 1e12:
        return "inf"
    return f"{int(ttl) // 10 * 10}s"


@dataclass(slots=True)
class Entry:
    """One of sitq's own records (cron, lock, slots) as read: ``head`` is ``None`` for a
    delete marker; ``stamp`` is the server's time of the write."""

    head: dict[str, Any] | None
    tail: bytes
    rev: int
    stamp: float


def encode(head: dict[str, Any], tail: bytes | None = None) -> bytes:
    """A record as written: the JSON head, then a newline and ``tail`` if there is one."""
    data = json.dumps(head, separators=(",", ":")).encode()
    return data + b"\n" + tail if tail is not None else data


def decode(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(head, tail) of an encoded record; ``ValueError`` if it is not one."""
    head, _, tail = bytes(data).partition(b"\n")
    rec = json.loads(head)
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    return rec, tail


def split(rec: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """A record to write as (JSON head, tail): the tail is the value (``HAS_VALUE``) or the
    payload (``HAS_PAYLOAD``) held in memory under ``VALUE``."""
    if VALUE in rec:
        head = {k: v for k, v in rec.items() if k != VALUE}
        if not head.get(HAS_PAYLOAD):
            head[HAS_VALUE] = True
        value: bytes = rec[VALUE]
        return head, value
    return rec, None


def expired(rec: dict[str, Any], now: float) -> bool:
    """Whether a finished record's result has expired."""
    exp = rec.get(EXPIRES_AT)
    return exp is not None and exp <= now


def keyed(rec: dict[str, Any] | None) -> bool:
    """Whether a task has a concurrency key (and so holds a slot while it runs)."""
    return (
        rec is not None
        and rec.get(CONCURRENCY_KEY) is not None
        and rec.get(CONCURRENCY_LIMIT) is not None
    )


# -- building records ----------------------------------------------------------------------


def new_record(
    task: NewTask, enqueued: float, eta: float, generation: str, token: str
) -> dict[str, Any]:
    """The first record of a task (``STATE`` first); its payload is written as the tail."""
    rec: dict[str, Any] = {
        STATE: "pending",
        TASK_ID: task.id,
        QUEUE: task.queue,
        PRIORITY: task.priority,
        GENERATION: generation,
        ETA: eta,
        ENQUEUED_AT: enqueued,
        RESULT_TTL: task.result_ttl,
        ATTEMPTS: 0,
        RETRIES: 0,
        FENCE: 0,
        FUNCTION: task.function,
        OPTIONS: task.options,
        HAS_PAYLOAD: True,
        LIST_TOKEN: token,
    }
    if task.concurrency_key is not None:
        rec[CONCURRENCY_KEY] = task.concurrency_key
        rec[CONCURRENCY_LIMIT] = task.concurrency_limit
    return rec


def message_body(head: bytes, payload: bytes, rev: int) -> bytes:
    """The body of a task's work message: its first record's JSON ``head`` (which holds the
    options), with the record's revision when known, then the payload."""
    extra = b',"%s":%d' % (REVISION.encode(), rev) if rev else b""
    return head[:-1] + extra + b"}\n" + payload


def message_record(head: dict[str, Any]) -> dict[str, Any]:
    """The record a work message carries (its head without the message's own fields)."""
    return {k: v for k, v in head.items() if k != REVISION}


def settled(rec: dict[str, Any]) -> dict[str, Any]:
    """A copy of a record without the fields of a running claim."""
    new = dict(rec)
    for field_name in RUNNING_FIELDS:
        new.pop(field_name, None)
    return new


def running(
    rec: dict[str, Any], fence: int, now: float, worker_id: str, lease: float
) -> dict[str, Any]:
    """The record of a new claim with fencing token ``fence`` (its listing token is the
    fence: unique to the claim)."""
    new = {k: v for k, v in rec.items() if k not in WAITING_FIELDS}
    new.update(
        {
            STATE: "running",
            ATTEMPTS: rec[ATTEMPTS] + 1,
            FENCE: fence,
            LEASE_UNTIL: now + lease,
            WORKER: worker_id,
            STARTED_AT: now,
            LIST_TOKEN: f"r{fence}",
        }
    )
    return new


def running_token(rec: dict[str, Any]) -> str:
    """The listing token of a running record (see ``running``)."""
    return f"r{rec[FENCE]}"


def leased(rec: dict[str, Any], until: float) -> dict[str, Any]:
    """The record with the claim's lease extended to ``until``."""
    return {**rec, LEASE_UNTIL: until}


def waiting(rec: dict[str, Any], kept: tuple[bytes, str] | None) -> dict[str, Any]:
    """A settled copy of ``rec`` that keeps the payload and options (``kept``, when its
    holder has them) for a later requeue or cancel."""
    new = settled(rec)
    if kept is not None:
        new[VALUE] = kept[0]
        new[OPTIONS] = kept[1]
        new[HAS_PAYLOAD] = True
    return new


def finished(
    rec: dict[str, Any], item: Finish, now: float, kept: tuple[bytes, str] | None
) -> dict[str, Any]:
    """The record of a task finished by ``item`` at ``now``: a success keeps its value, a
    failure its payload (``kept``)."""
    ttl = max(item.expires_at - item.finished_at, 0.0)
    new = waiting(rec, None if item.status is TaskStatus.SUCCESS else kept)
    new.update(
        {
            STATE: item.status.value,
            FINISHED_AT: now,
            EXPIRES_AT: now + ttl,
            ERROR: item.error,
            TRACEBACK: item.traceback,
        }
    )
    if item.value is not None and item.status is TaskStatus.SUCCESS:
        new[VALUE] = item.value
    return new


def rescheduled(
    rec: dict[str, Any], item: Reschedule, kept: tuple[bytes, str] | None
) -> dict[str, Any]:
    """The record of a task to be retried at ``item.eta``."""
    new = waiting(rec, kept)
    new.update(
        {
            STATE: "pending",
            ETA: item.eta,
            RETRIES: rec[RETRIES] + 1,
            ERROR: item.error,
            TRACEBACK: item.traceback,
        }
    )
    return new


def released(rec: dict[str, Any], kept: tuple[bytes, str] | None) -> dict[str, Any]:
    """The record of a task given back without counting the attempt."""
    new = waiting(rec, kept)
    new.update({STATE: "pending", ATTEMPTS: max(rec[ATTEMPTS] - 1, 0)})
    return new


def released_until(
    rec: dict[str, Any], kept: tuple[bytes, str] | None, eta: float
) -> dict[str, Any]:
    """The record of a task given back without counting the attempt, due again at ``eta``."""
    new = released(rec, kept)
    new[ETA] = eta
    return new


def cancel_flagged(rec: dict[str, Any]) -> dict[str, Any]:
    """The record of a running task asked to cancel."""
    return {**rec, CANCEL_REQUESTED: True}


def cancelled(rec: dict[str, Any], now: float) -> dict[str, Any]:
    """The record of a pending task cancelled at ``now`` (its payload, the tail, is kept)."""
    new = settled(rec)
    new.update(
        {
            STATE: "cancelled",
            ERROR: "cancelled before it started",
            TRACEBACK: None,
            FINISHED_AT: now,
            EXPIRES_AT: now + rec[RESULT_TTL],
        }
    )
    return new


# -- reading records -----------------------------------------------------------------------


def claim_of(rec: dict[str, Any], payload: bytes, options: str, problem: str | None) -> Claim:
    """The claim a running record stands for."""
    return Claim(
        task_id=rec[TASK_ID],
        queue=rec[QUEUE],
        payload=payload,
        options=options,
        priority=rec[PRIORITY],
        fencing_token=rec[FENCE],
        attempts=rec[ATTEMPTS],
        retries=rec[RETRIES],
        enqueued_at=rec[ENQUEUED_AT],
        started_at=rec[STARTED_AT],
        result_ttl=rec[RESULT_TTL],
        cancel_requested=bool(rec.get(CANCEL_REQUESTED)),
        corrupt=problem,
        function=str(rec.get(FUNCTION) or ""),
    )


def snapshot_of(rec: dict[str, Any], tail: bytes) -> TaskSnapshot:
    """What a reader sees of a record (``tail`` is its value only when ``HAS_VALUE``)."""
    status = TaskStatus(rec[STATE])
    running_now = status is TaskStatus.RUNNING
    return TaskSnapshot(
        task_id=rec[TASK_ID],
        queue=rec[QUEUE],
        status=status,
        attempts=rec[ATTEMPTS],
        enqueued_at=rec[ENQUEUED_AT],
        eta=rec[ETA],
        started_at=rec.get(STARTED_AT),
        finished_at=rec.get(FINISHED_AT),
        value=tail if rec.get(HAS_VALUE) and status.is_final else None,
        error=rec.get(ERROR),
        traceback=rec.get(TRACEBACK),
        function=str(rec.get(FUNCTION) or ""),
        priority=rec.get(PRIORITY, 0),
        progress=rec.get(PROGRESS) if running_now else None,
        progress_message=rec.get(PROGRESS_MESSAGE) if running_now else None,
        worker_id=rec.get(WORKER) if running_now else None,
    )


def requeued(rec: dict[str, Any], now: float, generation: str, token: str) -> dict[str, Any]:
    """The record of a failed or cancelled task made pending again, due ``now``, as a new life
    of its id (``generation``): attempts, retries, result, error and expiry cleared; the
    payload (the tail) and options kept."""
    new = settled(rec)
    for field_name in (
        STARTED_AT,
        FINISHED_AT,
        EXPIRES_AT,
        ERROR,
        TRACEBACK,
        HAS_VALUE,
        PROGRESS,
        PROGRESS_MESSAGE,
    ):
        new.pop(field_name, None)
    new.update(
        {
            STATE: "pending",
            GENERATION: generation,
            ETA: now,
            ATTEMPTS: 0,
            RETRIES: 0,
            HAS_PAYLOAD: True,
            LIST_TOKEN: token,
        }
    )
    return new


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def checked(
    rec: dict[str, Any], head: dict[str, Any], now: float
) -> tuple[dict[str, Any] | None, str | None]:
    """A task record with every field a claim reads of the right type: ``(rec, None)`` as it
    is, ``(repaired copy, what was wrong)`` for a damaged one (claimed, then failed by the
    worker with that), or ``(None, why)`` when not even its state can be read. ``head`` is the
    work message's, whose id and queue stand in for damaged ones."""
    if rec.get(STATE) not in _STATES:
        return None, f"its state is {rec.get(STATE)!r}"
    head_id = str(head.get(TASK_ID))
    ck, cl = rec.get(CONCURRENCY_KEY), rec.get(CONCURRENCY_LIMIT)
    # (field, name in the report, whether it is good, what replaces a bad one)
    checks: list[tuple[str, str, bool, Any]] = [
        (TASK_ID, "id", rec.get(TASK_ID) == head_id, head_id),
        (QUEUE, "queue", type(rec.get(QUEUE)) is str, str(head.get(QUEUE, "default"))),
        (PRIORITY, "priority", type(rec.get(PRIORITY)) is int, 0),
        (ETA, "eta", _number(rec.get(ETA)), now),
        (ENQUEUED_AT, "enqueued_at", _number(rec.get(ENQUEUED_AT)), now),
        (
            RESULT_TTL,
            "result_ttl",
            _number(rec.get(RESULT_TTL)) and rec.get(RESULT_TTL, 0) > 0,
            86_400.0,
        ),
        (ATTEMPTS, "attempts", type(rec.get(ATTEMPTS)) is int and rec.get(ATTEMPTS, -1) >= 0, 0),
        (RETRIES, "retries", type(rec.get(RETRIES)) is int and rec.get(RETRIES, -1) >= 0, 0),
        (FENCE, "fencing token", type(rec.get(FENCE)) is int, 0),
        (LEASE_UNTIL, "lease", LEASE_UNTIL not in rec or _number(rec[LEASE_UNTIL]), 0.0),
        (CONCURRENCY_KEY, "concurrency_key", ck is None or type(ck) is str, None),
        (
            CONCURRENCY_LIMIT,
            "concurrency_limit",
            ck is None or (type(cl) is int and rec.get(CONCURRENCY_LIMIT, 0) >= 1),
            None,
        ),
    ]
    problems = [f"{name} is {rec.get(field)!r}"[:80] for field, name, ok, _ in checks if not ok]
    if not problems:
        return rec, None
    fixed = dict(rec)
    fixed.update({field: default for field, _, ok, default in checks if not ok})
    return fixed, "; ".join(problems)
