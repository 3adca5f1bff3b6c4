"""Task functions the browser tests enqueue; importable by worker subprocesses.

Some look like a shop's tasks (e-mails, reports, images) so that the dashboard the tests drive,
and the screenshots they take, show what an operator would see. Every task that waits does so
on a file the test creates, never on a clock.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import sitq
from tests.web.tasks import HOSTILE

__all__ = [
    "HOSTILE",
    "build_report",
    "fail_once",
    "hostile",
    "resize_images",
    "send_email",
    "step_by_step",
    "wait_for_release",
]

WAIT_LIMIT = 120.0
"""The longest any task here waits for its file (then it fails instead of hanging)."""


async def _released(path: str | Path) -> None:
    """Return once ``path`` exists; ``TimeoutError`` after ``WAIT_LIMIT`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_LIMIT
    while not os.path.exists(path):
        if loop.time() > deadline:
            raise TimeoutError(f"{path} did not appear within {WAIT_LIMIT:g} s")
        await asyncio.sleep(0.02)


def _smtp_deliver(to: str, subject: str) -> None:
    if to.endswith(".invalid"):
        raise ConnectionRefusedError(f"550 5.1.1 <{to}>: recipient address rejected")


def send_email(to: str, subject: str) -> str:
    """Send one e-mail; an address under ``.invalid`` is refused by the mail server."""
    _smtp_deliver(to, subject)
    return f"sent {subject!r} to {to}"


def _load_rows(name: str, rows: int) -> list[int]:
    if rows < 0:
        raise ValueError(f"report {name!r}: the ledger returned {rows} rows")
    return list(range(rows))


def build_report(name: str, rows: int) -> dict[str, object]:
    """Build a report of ``rows`` rows; a negative count is a broken ledger."""
    data = _load_rows(name, rows)
    return {"report": name, "rows": len(data)}


def _fetch_original(album: str, number: int, hiccup: str | None) -> None:
    if hiccup is not None and not os.path.exists(hiccup):
        Path(hiccup).write_text("failed once")
        raise TimeoutError(
            f"object storage did not answer within 30 s (GET {album}/{number:04d}.jpg)"
        )


async def resize_images(album: str, count: int, release: str, hiccup: str | None = None) -> int:
    """Resize the ``count`` images of an album, reporting progress; the last ones wait for
    ``release`` to exist. With ``hiccup``, a path, the first attempt (the one that creates it)
    fails when the storage does not answer."""
    ctx = sitq.current_task()
    done = int(count * 0.62)
    _fetch_original(album, done + 1, hiccup)
    ctx.set_progress(done / count, f"resized {done} of {count} images of {album}")
    await _released(release)
    ctx.set_progress(1.0, f"resized {count} of {count} images of {album}")
    return count


def fail_once(marker: str, message: str) -> str:
    """Fail with ``message`` on the first attempt (creating ``marker``); succeed on every
    later one."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ValueError(message)
    return "succeeded after a requeue"


async def step_by_step(directory: str, steps: int) -> int:
    """Report progress ``i / steps`` with the message ``step i of N``, then wait for the file
    ``directory/go-i`` before the next step."""
    ctx = sitq.current_task()
    for i in range(1, steps + 1):
        ctx.set_progress(i / steps, f"step {i} of {steps}")
        await _released(Path(directory) / f"go-{i}")
    return steps


async def wait_for_release(release: str) -> str:
    """Run until ``release`` exists (or the task is cancelled)."""
    await _released(release)
    return "released"


async def hostile(release: str) -> None:
    """Report progress with markup as its message, wait for ``release``, then fail with markup
    as the error. Its recorded function name is markup too (its ``__qualname__``)."""
    sitq.current_task().set_progress(0.5, HOSTILE)
    await _released(release)
    raise ValueError(HOSTILE)


# The name the queue records (module.qualname) then carries the markup. cloudpickle cannot
# find the function by that name, so it stores it by value, and a worker still runs it.
hostile.__qualname__ = HOSTILE
