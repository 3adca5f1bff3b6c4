"""Queue statistics on the NATS backend: every record of the bucket read once through an
ephemeral consumer, and counted per queue and state. The walk itself (``each_record``) also
serves the format migration (``_migrate``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from sitq.backends.nats._client import Client
from sitq.backends.nats._jetstream import NS, stream_seq
from sitq.backends.nats._records import ETA, QUEUE, STATE, decode, expired
from sitq.errors import BackendError
from sitq.models import QueueStats


async def count_tasks(client: Client, now: float) -> list[QueueStats]:
    """Count tasks per queue and state at ``now`` (the server's clock) by reading every record
    (an ephemeral consumer). Each batch is counted as it comes, so the event loop gets a turn
    between batches rather than waiting for every record to be decoded at the end."""
    counts: dict[str, dict[str, int]] = {}
    async for batch in each_record(client):
        for raw in batch:
            try:
                rec, _ = decode(raw.data)
                status, queue = rec[STATE], rec[QUEUE]
            except (ValueError, KeyError, TypeError):
                continue
            if expired(rec, now):
                continue
            kind = _KINDS.get(status)
            if kind == "pending" and rec.get(ETA, 0) > now:
                kind = "scheduled"
            if kind is None:
                continue
            c = counts.setdefault(queue, {})
            c[kind] = c.get(kind, 0) + 1
    return [QueueStats(queue=q, **c) for q, c in sorted(counts.items())]


_KINDS = {
    "pending": "pending",
    "running": "running",
    "success": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
"""The count each stored state goes to (a pending task due later counts as scheduled)."""


@dataclass(frozen=True, slots=True)
class Raw:
    """A record of the bucket as stored: its key, revision and encoded data."""

    key: str
    rev: int
    data: bytes


async def each_record(client: Client, batch_size: int = 1000) -> AsyncGenerator[list[Raw], None]:
    """Every record of the bucket (deletion markers left out) in the order of their last
    writes, in batches of up to ``batch_size`` as fetched by an ephemeral consumer. Records
    written after the walk starts may or may not be included."""
    nc = client.connection()
    name = "stats_" + secrets.token_hex(8)
    config = {
        "name": name,
        "deliver_policy": "all",
        "ack_policy": "all",
        "max_ack_pending": -1,
        "filter_subject": f"{client.kv_prefix}>",
        "mem_storage": True,
        "num_replicas": 1,
        "inactive_threshold": 60 * NS,
    }
    created = await client.api(
        f"CONSUMER.CREATE.{client.kv_stream}", {"stream_name": client.kv_stream, "config": config}
    )
    assert created is not None
    name = created.get("name", name)
    total = int(created.get("num_pending", 0))
    inbox = nc.new_inbox()
    records: list[Raw] = []
    skip = len(client.kv_prefix)
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
            records.append(Raw(msg.subject[skip:], stream_seq(msg.reply), bytes(msg.data)))
        state["left"] -= 1
        if state["left"] <= 0 and done is not None and not done.done():
            done.set_result(None)

    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        while state["received"] < total:
            before = state["received"]
            batch = min(total - before, batch_size)
            state.update(left=batch, done=loop.create_future(), last=loop.time())
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{client.kv_stream}.{name}",
                json.dumps({"batch": batch, "no_wait": True}).encode(),
                reply=inbox,
            )
            while not state["done"].done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(state["done"]), 1.0)
                if loop.time() - state["last"] > client.request_timeout:
                    raise BackendError("NATS: reading the task records timed out")
            if state["received"] == before:
                break  # records removed meanwhile
            got, records = records, []
            if got:
                yield got
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await client.api(f"CONSUMER.DELETE.{client.kv_stream}.{name}", None)
