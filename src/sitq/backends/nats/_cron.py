"""Cron schedules on the NATS backend: ``_.cron.<name>`` per schedule (its definition and
``last_tick``) and ``_.crons``, the index of their names. Every change is a write conditioned
on the revision read, and a delete removes one exact revision."""

from __future__ import annotations

import contextlib

from sitq.backends.nats._client import CAS_TRIES, Client
from sitq.backends.nats._jetstream import ack_seq
from sitq.backends.nats._records import CRON_INDEX, CRON_NAMES, CRON_TICK, NAME, cron_key, encode
from sitq.errors import BackendError
from sitq.models import CronRecord


async def put_cron(client: Client, name: str, definition: bytes, start: float) -> None:
    """Create the schedule's record (``last_tick = start``) or replace its definition and
    keep its ``last_tick`` (a conditioned write), then list its name in the index."""
    key = cron_key(name)
    for _ in range(CAS_TRIES):
        (entry,) = await client.read_meta([key])
        tick = start
        if entry is not None and entry.head is not None:
            with contextlib.suppress(KeyError, TypeError, ValueError):
                tick = float(entry.head[CRON_TICK])
        data = encode({NAME: name, CRON_TICK: tick}, definition)
        if ack_seq(await client.one(*client.write(key, data, entry.rev if entry else 0))):
            break
    else:
        raise BackendError(f"could not store cron {name!r}: its record kept changing")
    await _index(client, name, add=True)


async def delete_cron(client: Client, name: str) -> bool:
    """Delete the schedule's record by its revision, then take its name off the index."""
    key = cron_key(name)
    for _ in range(CAS_TRIES):
        (entry,) = await client.read_meta([key])
        if entry is None or entry.head is None:
            return False
        if await client.delete_rev(entry.rev):
            break
    else:
        raise BackendError(f"could not delete cron {name!r}: its record kept changing")
    await _index(client, name, add=False)
    (entry,) = await client.read_meta([key])
    if entry is not None and entry.head is not None:
        await _index(client, name, add=True)  # stored again meanwhile: keep it listed
    return True


async def list_crons(client: Client) -> list[CronRecord]:
    """Read the index of names, then every schedule's record (two round trips)."""
    (index,) = await client.read_meta([CRON_INDEX])
    names = index.head.get(CRON_NAMES, []) if index is not None and index.head else []
    found = await client.read_meta([cron_key(n) for n in names])
    out = []
    for entry in found:
        if entry is None or entry.head is None:
            continue  # listed by a put or delete that was interrupted
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out.append(CronRecord(str(entry.head[NAME]), entry.tail, float(entry.head[CRON_TICK])))
    out.sort(key=lambda r: r.name)
    return out


async def advance_cron(client: Client, name: str, expected: float, tick: float) -> bool:
    """Compare-and-set of ``last_tick``: a write conditioned on the revision that showed
    ``expected``; a lost race reads again only to see whether ``expected`` still holds."""
    key = cron_key(name)
    for _ in range(CAS_TRIES):
        (entry,) = await client.read_meta([key])
        if entry is None or entry.head is None or entry.head.get(CRON_TICK) != expected:
            return False
        data = encode({**entry.head, CRON_TICK: tick}, entry.tail)
        if ack_seq(await client.one(*client.write(key, data, entry.rev))):
            return True
    raise BackendError(f"could not advance cron {name!r}: its record kept changing")


async def _index(client: Client, name: str, *, add: bool) -> None:
    """Add a name to (or remove it from) the index of schedules, a conditioned write."""
    for _ in range(CAS_TRIES):
        (entry,) = await client.read_meta([CRON_INDEX])
        names: list[str] = []
        if entry is not None and entry.head is not None:
            names = list(entry.head.get(CRON_NAMES) or [])
        if (name in names) == add:
            return
        names = sorted({*names, name}) if add else [n for n in names if n != name]
        data = encode({CRON_NAMES: names})
        if ack_seq(await client.one(*client.write(CRON_INDEX, data, entry.rev if entry else 0))):
            return
    raise BackendError("could not update the index of cron schedules: it kept changing")
