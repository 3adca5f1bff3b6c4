"""The Lua scripts of the Redis backend: read from ``scripts/*.lua`` (shipped with the package),
each preceded by the shared fragments of ``scripts/lib/`` it uses, in a declared order.

A script is sent as is: nothing is spliced into its text, so what runs on the server is what
the file says. Values it needs from the backend are fixed in the file (see the constants
below, which must match) or passed as arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

# The window in which a claim of an explicit id's index entry may still store the id (fixed in
# enqueue.lua); a takeover fences the token of a younger claim for FENCE_MS (fixed in
# revoke.lua), which exceeds the window by the clock skew between cluster nodes tolerated.
CLAIM_WINDOW_MS = 60_000
FENCE_MS = 600_000

# Each script and the fragments of scripts/lib/ it is preceded by, in this order: `common`
# (the server's time, ready ranks), `requeue` (moving due tasks to `ready`, the next due
# time: declares `SL`), `keyed` (concurrency keys: declares `CK` and `PK`), `listing` (rows of
# a listing: declares `FIELDS`), `explicit` (`queue_key` and the id index's verdict on an
# explicit id); the script then sets what they declare.
LAYOUT: dict[str, tuple[str, ...]] = {
    "enqueue": ("common", "explicit"),
    "claim": ("common", "requeue", "keyed"),
    "peek": ("common", "requeue"),
    "next_due": ("common", "requeue"),
    "extend": ("common",),
    "settle": ("common", "requeue", "keyed"),
    "cancel": ("common", "keyed"),
    "stats": ("common",),
    "purge": ("common",),
    "claim_index": (),
    "revoke": (),
    "unindex": (),
    "lock_acquire": (),
    "lock_acquire_any": (),
    "lock_extend": (),
    "lock_release": (),
    "cron_put": (),
    "cron_advance": (),
    "list_pending": ("listing",),
    "list_scored": ("common", "listing"),
    "requeue_tasks": ("common", "requeue"),
    "purge_tasks": (),
    "progress": (),
    "workers_list": (),
    "migrate": ("common",),
    "format_set": (),
    "replace": ("common", "requeue", "keyed", "explicit"),
    "hold": ("common", "listing"),
    "put_stored": ("common", "explicit"),
    "drop_held": (),
}


@dataclass(frozen=True, slots=True)
class Script:
    """One script as the server runs it: its full source and the SHA1 that ``EVALSHA`` names
    it by."""

    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    path = resources.files(__package__).joinpath("scripts", *f"{name}.lua".split("/"))
    return path.read_text("utf-8")


def _load() -> dict[str, Script]:
    scripts = {}
    for name, libs in LAYOUT.items():
        source = "".join(_read(f"lib/{lib}") for lib in libs) + _read(name)
        sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
        scripts[name] = Script(name, source, sha)
    return scripts


SCRIPTS: dict[str, Script] = _load()
BY_SHA: dict[bytes, Script] = {s.sha.encode(): s for s in SCRIPTS.values()}


def script_for(sha: bytes | str) -> Script:
    """The script an ``EVALSHA`` names (to load it again after ``NOSCRIPT``)."""
    return BY_SHA[sha if isinstance(sha, bytes) else sha.encode()]


def evalsha(name: str, keys: Sequence[str], args: Iterable[Any]) -> tuple[Any, ...]:
    """The command that runs script ``name`` on ``keys`` with ``args``."""
    return ("EVALSHA", SCRIPTS[name].sha, len(keys), *keys, *args)
