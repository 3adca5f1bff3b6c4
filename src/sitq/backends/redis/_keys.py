"""The key layout of the Redis backend (described in ``backend``): every key of one queue
shares the hash tag ``{<prefix>:<queue>}``."""

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
    work: str
    index: str  # the prefix of the id index keys (shared by every queue)
    prefix: str  # the backend's key prefix


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
