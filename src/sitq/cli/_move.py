"""``sitq move``: moving queued work from one store to another (see ``sitq._move``)."""

from __future__ import annotations

import argparse

from sitq._move import DEFAULT_BATCH, HOLDER, MAX_BATCH, MoveReport, check_movable, move
from sitq.backends import backend_from_url, redact_url
from sitq.cli._common import add_json, existing_store, print_json
from sitq.errors import ConfigurationError

DESCRIPTION = f"""\
Move every pending and scheduled task (of the queues given with -q, or of every queue) and
their cron schedules from SRC_URL to DST_URL: ids, ETAs, priorities, attempts, options and
payloads as stored (nothing is unpickled). Running tasks stay in SRC and are counted; finished
tasks and their results stay in SRC until they expire. Safe to kill and run again: no task is
lost or stored twice, and none is ever runnable in both stores (while a batch moves, its tasks
show in SRC as running on worker {HOLDER!r}). Run one move at a time per source. Works
between every two of the memory, SQLite, PostgreSQL, Redis and NATS stores. SRC must exist; a
SQLite DST is created if needed."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The options of ``move``."""
    parser = sub.add_parser(
        "move",
        help="move pending and scheduled tasks and cron schedules to another store",
        description=DESCRIPTION,
    )
    parser.add_argument("src_url", metavar="SRC_URL", help="the store to move from")
    parser.add_argument("dst_url", metavar="DST_URL", help="the store to move to")
    parser.add_argument(
        "-q",
        "--queue",
        action="append",
        dest="queues",
        metavar="QUEUE",
        help="only this queue's tasks and schedules; repeat for several (default: all)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would move, change nothing"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=DEFAULT_BATCH,
        help=f"tasks per step, 1 to {MAX_BATCH} (default {DEFAULT_BATCH})",
    )
    add_json(parser)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _print(report: MoveReport, dry_run: bool, src: str, dst: str) -> None:
    verb = "would move" if dry_run else "moved"
    print(f"{'dry run: ' if dry_run else ''}{src} -> {dst}")
    print(f"{verb}: {_plural(report.moved, 'task')}")
    print(f"already in destination: {_plural(report.already_present, 'task')}")
    print(f"running, left in source: {_plural(report.running_left, 'task')}")
    print(f"cron schedules {verb}: {report.crons_moved}")
    if report.lost:
        print(f"taken over by another move: {_plural(report.lost, 'task')}")


async def run(args: argparse.Namespace) -> int:
    """``sitq move``."""
    if args.queues is not None and not all(args.queues):
        raise ConfigurationError("-q/--queue needs a queue name")
    source = existing_store(args.src_url)
    destination = backend_from_url(args.dst_url)
    if source.describe() == destination.describe():
        raise ConfigurationError(
            f"SRC_URL and DST_URL name the same store ({source.describe()}): give another DST_URL"
        )
    check_movable(source, destination)
    await source.connect()
    try:
        await destination.connect()
        try:
            report = await move(
                source, destination, args.queues, dry_run=args.dry_run, batch=args.batch
            )
        finally:
            await destination.close()
    finally:
        await source.close()
    if args.json:
        print_json({"dry_run": args.dry_run, **{f: getattr(report, f) for f in report.__slots__}})
    else:
        _print(report, args.dry_run, redact_url(args.src_url), redact_url(args.dst_url))
    return 0
