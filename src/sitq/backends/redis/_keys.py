"""The key layout of the Redis backend.

* Every key of one queue shares the hash tag ``{<prefix>:<queue>}``, so each Lua script touches
  one slot and the backend works unchanged on Redis Cluster. Per queue:

  - ``<prefix>:{<prefix>:<queue>}:t:<id>``: the task, one hash (payload stored once; dropped
    when the task finishes). A finished task's hash gets a TTL (``PEXPIREAT``) of its
    ``result_ttl``: the result is the same key, and Redis removes it on time.
  - ``...:ready``: due pending tasks, a sorted set whose members all have score 0 and sort
    *by member*: ``%08x`` of ``2**31-1 - priority``, ``%014x`` of the ETA in microseconds,
    ``%012x`` of a per-queue sequence number, then the id. Lexicographic order is then exactly
    (priority desc, ETA, enqueue order), with no 53-bit limit of a double score.
  - ``...:sched``: pending tasks whose ETA is in the future, scored by ETA; a claim moves the
    due ones to ``ready`` first.
  - ``...:leases``: running tasks scored by lease expiry; a claim takes expired ones over.
  - ``...:seq`` (the sequence counter) and ``...:done:s|f|c`` (finished tasks by status,
    scored by result expiry; stats count them and ``purge_expired`` trims them).
  - ``...:ck:r:<key>`` and ``...:ck:w:<key>``: per concurrency key, its running tasks scored
    by lease expiry and its parked tasks (popped from ``ready`` while the key was full, moved
    back when a settle or cancel frees a slot); ``...:ck`` lists the keys with parked tasks.
  - The listing indexes (``list_tasks`` reads a page through them, at a cost that does not
    grow with the number of tasks): pending tasks are listed from ``ready`` and two sets
    ordered like it (score 0, the same rank members): ``...:sl`` (scheduled tasks, ranked when
    they are enqueued; the rank, kept in the hash's ``rk``, goes to ``ready`` unchanged when
    the task falls due) and ``...:pk`` (parked tasks). ``...:run`` holds running tasks scored
    by ``started_at``; ``...:fin:s|f|c`` finished tasks per status scored by ``-finished_at``
    (ties by id). Due tasks (the common case) need no index beyond ``ready``.

* ``<prefix>:queues`` is the set of the known queues, and ``<prefix>:{<prefix>:queues}:format``
  (in the same slot) the store's format version: absent in a store written before the listing
  indexes existed (format 1), 2 since. ``connect()`` brings an older store up to date (see
  ``_migration``): ``...:mig`` and ``...:mig:ck`` per queue keep that migration's progress
  while it runs, and ``<prefix>:{<prefix>:queues}:migrating`` is the lock of the client that
  runs it.

* Worker records are one hash, ``<prefix>:{<prefix>:workers}``: worker id to ``<expires_at>
  <data>``.

* Cron schedules are one hash (``<prefix>:{<prefix>:crons}``) and each lock one key
  (``<prefix>:lock:<name>``, the owner's token with a TTL kept by the server).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# What a key prefix may be.
PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def queue_keys(prefix: str, queue: str, work_prefix: str) -> QueueKeys:
    """The keys of ``queue`` under ``prefix``; ``work_prefix`` starts its work channel."""
    base = f"{prefix}:{{{prefix}:{queue}}}"
    return QueueKeys(
        task=f"{base}:t:",
        ready=f"{base}:ready",
        sched=f"{base}:sched",
        leases=f"{base}:leases",
        seq=f"{base}:seq",
        done_s=f"{base}:done:s",
        done_f=f"{base}:done:f",
        done_c=f"{base}:done:c",
        claims=f"{base}:claim:",
        settles=f"{base}:settle:",
        ck=f"{base}:ck",
        fence=f"{base}:f:",
        sl=f"{base}:sl",
        pk=f"{base}:pk",
        run=f"{base}:run",
        fin_s=f"{base}:fin:s",
        fin_f=f"{base}:fin:f",
        fin_c=f"{base}:fin:c",
        migration=f"{base}:mig",
        migration_keys=f"{base}:mig:ck",
        work=f"{work_prefix}{queue}",
        index=f"{prefix}:id:",
        prefix=prefix,
    )


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The keys of one queue (all in one hash slot) and its work channel."""

    task: str
    ready: str
    sched: str
    leases: str
    seq: str
    done_s: str
    done_f: str
    done_c: str
    claims: str
    settles: str
    ck: str
    fence: str  # the prefix of the fence keys of explicit ids (Redis Cluster)
    sl: str  # scheduled tasks by rank (listing)
    pk: str  # parked tasks by rank (listing)
    run: str  # running tasks by started_at (listing)
    fin_s: str  # finished tasks by -finished_at, per status (listing)
    fin_f: str
    fin_c: str
    migration: str  # the progress of the store format migration on this queue (a hash)
    migration_keys: str  # the concurrency keys that migration has still to look at (a set)
    work: str
    index: str  # the prefix of the id index keys (shared by every queue)
    prefix: str  # the backend's key prefix


def queues_key(prefix: str) -> str:
    """The set of the known queues under ``prefix``."""
    return f"{prefix}:queues"


def format_key(prefix: str) -> str:
    """The store's format version under ``prefix``. Its hash tag is the name of the known
    queues set, so that both share one slot on a Redis Cluster."""
    return f"{prefix}:{{{queues_key(prefix)}}}:format"


def migration_lock_key(prefix: str) -> str:
    """The lock held by the client that migrates the store (in the known queues' slot)."""
    return f"{prefix}:{{{queues_key(prefix)}}}:migrating"


def workers_key(prefix: str) -> str:
    """The hash of the worker records under ``prefix`` (one slot of its own)."""
    return f"{prefix}:{{{prefix}:workers}}"


def parse_entry(entry: str) -> tuple[str, str, int]:
    """An id index entry's queue, token and claim time in milliseconds: ``<queue> <token>
    <ms>`` for an explicit id on a Redis Cluster, the bare queue name otherwise (no token,
    claimed at 0)."""
    parts = entry.split(" ")
    if len(parts) == 3 and parts[2].isdigit():
        return parts[0], parts[1], int(parts[2])
    return entry, "", 0


def entry_queue(raw: Any) -> str:
    """The queue an id index entry names."""
    return bytes(raw).split(b" ", 1)[0].decode()
