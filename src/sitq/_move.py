"""Moving queued work from one store to another (``sitq move``).

Every pending and scheduled task of the chosen queues goes from the source store to the
destination as it is stored: id, ETA, priority, enqueue time, attempts, retries, last error,
the engine's options, and the payload as bytes (never deserialized, so moving runs no code of
the application). Then every cron schedule of those queues. Running tasks stay where they are.

Each batch takes three steps, in this order:

1. ``hold`` the tasks in the source: each becomes running under a claim by :data:`HOLDER`
   whose lease never ends, so no worker of the source can take it any more, and a worker that
   took it first keeps it (it is then running, and never held);
2. ``put_stored`` them in the destination, which leaves alone any id it already knows;
3. ``drop_held`` them from the source, fenced by the hold's claim.

At no moment can a task run in both stores: before step 2 it is runnable only in the source
(or held, runnable nowhere); after it, only in the destination. A run killed at any point
leaves tasks held in the source; the next run holds those first, stores them again (the ids the
destination already has count as already present) and drops them. A schedule is copied, then
removed from the source: a run killed between the two leaves it in both, and the next run
removes it from the source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sitq.backends.base import Backend
from sitq.cron import CronDefinition
from sitq.errors import ConfigurationError
from sitq.models import CronRecord, TaskStatus

HOLDER = "sitq-move"
"""The ``worker_id`` of the tasks a move holds: they list as running on this worker until the
move has stored them in the destination and removed them from the source."""

DEFAULT_BATCH = 200
"""Tasks moved per step."""

MAX_BATCH = 1000
"""The largest batch ``move`` takes."""


@dataclass(slots=True)
class MoveReport:
    """What a move did (or, with ``dry_run``, would do)."""

    moved: int = 0
    """Tasks newly stored in the destination (and removed from the source)."""
    already_present: int = 0
    """Tasks whose id the destination already knew: removed from the source, not stored."""
    running_left: int = 0
    """Tasks running on workers of the source: left where they are."""
    crons_moved: int = 0
    """Cron schedules copied to the destination and removed from the source."""
    lost: int = 0
    """Held tasks whose hold another move took over before this one removed them (another
    ``sitq move`` from the same source ran at the same time): that one moves them."""


def check_batch(batch: object) -> int:
    """A batch size from 1 to :data:`MAX_BATCH`."""
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ConfigurationError(
            f"batch must be a whole number from 1 to {MAX_BATCH}, not {batch!r}"
        )
    return batch


def check_movable(source: Backend, destination: Backend) -> None:
    """Refuse, before anything changes, a store that lacks a step of moving."""
    for backend, role, steps in (
        (source, "the source", ("hold", "drop_held", "list_crons", "delete_cron")),
        (destination, "the destination", ("put_stored", "put_cron")),
    ):
        missing = [s for s in steps if getattr(type(backend), s) is getattr(Backend, s)]
        if missing:
            raise ConfigurationError(
                f"{role} ({backend.describe()}) cannot take part in a move: "
                f"{type(backend).__name__} lacks {', '.join(missing)}"
            )


async def source_queues(source: Backend) -> list[str]:
    """Every queue the source has tasks in, by name."""
    return [s.queue for s in await source.stats(time.time())]


def _cron_queue(record: CronRecord) -> str | None:
    # The definition is the engine's JSON; its payload stays base64 text, never deserialized.
    try:
        return CronDefinition.decode(record.definition).queue
    except (ValueError, KeyError, TypeError):
        return None


async def _crons(source: Backend, queues: Sequence[str] | None) -> list[CronRecord]:
    records = await source.list_crons()
    if queues is None:
        return records
    wanted = set(queues)
    return [r for r in records if _cron_queue(r) in wanted]


async def _count_running(source: Backend, queues: Sequence[str]) -> tuple[int, list[str]]:
    """The tasks of ``queues`` running on workers, and the ids held by an earlier move."""
    running = 0
    held: list[str] = []
    for queue in queues:
        after = None
        while True:
            page = await source.list_tasks(TaskStatus.RUNNING, queue, 500, after, time.time())
            for snap in page.tasks:
                if snap.worker_id == HOLDER:
                    held.append(snap.task_id)
                else:
                    running += 1
            after = page.after
            if after is None:
                break
    return running, held


async def _dry_run(
    source: Backend, destination: Backend, queues: Sequence[str], crons: list[CronRecord]
) -> MoveReport:
    report = MoveReport(crons_moved=len(crons))
    report.running_left, ids = await _count_running(source, queues)
    for queue in queues:
        after = None
        while True:
            page = await source.list_tasks(TaskStatus.PENDING, queue, 500, after, time.time())
            ids.extend(snap.task_id for snap in page.tasks)
            after = page.after
            if after is None:
                break
    for task_id in ids:
        if await destination.get_task(task_id) is None:
            report.moved += 1
        else:
            report.already_present += 1
    return report


async def move(
    source: Backend,
    destination: Backend,
    queues: Sequence[str] | None = None,
    *,
    dry_run: bool = False,
    batch: int = DEFAULT_BATCH,
    on_batch: Callable[[MoveReport], None] | None = None,
) -> MoveReport:
    """Move the pending and scheduled tasks of ``queues`` (``None``: every queue) and their
    cron schedules from ``source`` to ``destination``, both connected; see the module
    docstring. ``dry_run`` counts what would move and changes nothing. ``on_batch`` is called
    with the counts so far after each batch."""
    batch = check_batch(batch)
    check_movable(source, destination)
    chosen = list(queues) if queues is not None else await source_queues(source)
    crons = await _crons(source, queues)
    if dry_run:
        return await _dry_run(source, destination, chosen, crons)
    report = MoveReport()
    while chosen:
        held = await source.hold(chosen, batch, HOLDER)
        if not held:
            break
        stored = await destination.put_stored([h.record for h in held])
        dropped = await source.drop_held([h.ref for h in held])
        for new, gone in zip(stored, dropped, strict=True):
            if not gone:
                report.lost += 1
            elif new:
                report.moved += 1
            else:
                report.already_present += 1
        if on_batch is not None:
            on_batch(report)
        if not any(dropped):
            break  # another move holds them now: it finishes them
    for record in crons:
        await destination.put_cron(record.name, record.definition, record.last_tick)
        await source.delete_cron(record.name)
        report.crons_moved += 1
    report.running_left, _ = await _count_running(source, chosen)
    return report
