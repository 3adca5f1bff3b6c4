"""``sitq info``, ``sitq tasks``, ``sitq show`` and ``sitq workers``: looking, never touching.
None of them reads a task's arguments or result (nothing is unpickled)."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

from sitq.backends import redact_url
from sitq.cli._common import Refused, add_json, add_url, existing_store, print_json, print_table
from sitq.cron import CronInfo
from sitq.models import TaskInfo, TaskStatus, WorkerInfo
from sitq.queue import TaskQueue

_STATUSES = [s.value for s in TaskStatus]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The options of ``info``, ``tasks``, ``show`` and ``workers``."""
    info = sub.add_parser("info", help="task counts per queue, live workers, cron schedules")
    add_url(info)

    tasks = sub.add_parser(
        "tasks",
        help="list tasks (running, then pending, then finished, newest first)",
        description="List tasks: running ones longest-running first, pending ones in the "
        "order workers take them, finished ones most recent first.",
    )
    add_url(tasks)
    tasks.add_argument(
        "--status",
        action="append",
        choices=_STATUSES,
        help="only tasks in this status; repeat for several (default: all)",
    )
    tasks.add_argument("-q", "--queue", help="only tasks of this queue (default: all)")
    tasks.add_argument("--limit", type=int, default=50, help="at most this many tasks (default 50)")
    add_json(tasks)

    show = sub.add_parser("show", help="one task in full, with its traceback")
    add_url(show)
    show.add_argument("task_id", help="the task's id")
    add_json(show)

    workers = sub.add_parser("workers", help="the workers alive now")
    add_url(workers)
    add_json(workers)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _detail(info: TaskInfo) -> str:
    if info.status is TaskStatus.RUNNING and info.progress is not None:
        text = f"{info.progress:.0%}"
        return f"{text} {info.progress_message}" if info.progress_message else text
    if info.error:
        return info.error if len(info.error) <= 60 else info.error[:57] + "..."
    return ""


def _moment(info: TaskInfo) -> datetime | None:
    if info.status is TaskStatus.PENDING:
        return info.eta
    if info.status is TaskStatus.RUNNING:
        return info.started_at
    return info.finished_at


async def info(args: argparse.Namespace) -> int:
    """``sitq info``: counts per queue, the workers, the cron schedules."""
    async with TaskQueue(existing_store(args.url)) as queue:
        stats = await queue.stats()
        workers = await queue.list_workers()
        crons = [CronInfo.from_record(r) for r in await queue.backend.list_crons()]
    print(redact_url(queue.backend.describe()))
    header = ("queue", "pending", "scheduled", "running", "succeeded", "failed", "cancelled")
    counts = [
        (s.pending, s.scheduled, s.running, s.succeeded, s.failed, s.cancelled) for s in stats
    ]
    rows = [(s.queue, *(str(n) for n in c)) for s, c in zip(stats, counts, strict=True)]
    print_table(header, rows, right=range(1, len(header)))
    if not stats:
        print("(no tasks)")
    print()
    print(f"workers: {len(workers)}")
    for w in workers:
        print(f"  {w.worker_id}  {w.kind}  queues {','.join(w.queues)}  running {w.running}")
    if crons:
        print()
        print("cron schedules:")
        for c in crons:
            upcoming = c.next_run.isoformat() if c.next_run else "never"
            print(
                f"  {c.name}  {c.expression!r} {c.timezone}  -> {c.func} on {c.queue}, "
                f"next {upcoming}"
            )
    return 0


async def tasks(args: argparse.Namespace) -> int:
    """``sitq tasks``: a listing, paged through up to ``--limit`` tasks."""
    if args.limit < 1:
        from sitq.errors import ConfigurationError

        raise ConfigurationError(f"--limit must be 1 or more, not {args.limit}")
    found: list[TaskInfo] = []
    more = False
    async with TaskQueue(existing_store(args.url)) as queue:
        cursor = None
        while len(found) < args.limit:
            page = await queue.list_tasks(
                args.status, args.queue, limit=min(args.limit - len(found), 1000), cursor=cursor
            )
            found.extend(page.tasks)
            cursor = page.next_cursor
            if cursor is None:
                break
        more = cursor is not None
    if args.json:
        print_json([i.to_dict() for i in found])
    else:
        rows = [
            (
                i.task_id,
                i.status.value,
                i.queue,
                i.function,
                str(i.attempts),
                _when(_moment(i)),
                _detail(i),
            )
            for i in found
        ]
        print_table(
            ("task", "status", "queue", "function", "tries", "when", "detail"), rows, right=(4,)
        )
        if not found:
            print("(no tasks)")
    if more:
        print(f"(more than {args.limit} tasks: raise --limit to see them)", file=sys.stderr)
    return 0


async def show(args: argparse.Namespace) -> int:
    """``sitq show``: every field of one task."""
    async with TaskQueue(existing_store(args.url)) as queue:
        found = await queue.get_task(args.task_id)
    if found is None:
        raise Refused(f"no task {args.task_id!r} (unknown, or its result has expired)")
    if args.json:
        print_json(found.to_dict())
        return 0
    fields = found.to_dict()
    traceback = fields.pop("traceback")
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {'-' if value is None else value}")
    if traceback:
        print()
        print(traceback.rstrip())
    return 0


async def workers(args: argparse.Namespace) -> int:
    """``sitq workers``: the live workers."""
    async with TaskQueue(existing_store(args.url)) as queue:
        found: list[WorkerInfo] = await queue.list_workers()
    if args.json:
        print_json([w.to_dict() for w in found])
        return 0
    now = time.time()
    rows = [
        (
            w.worker_id,
            w.kind,
            ",".join(w.queues),
            str(w.concurrency),
            str(w.running),
            str(w.processed),
            str(w.failed),
            "-" if w.last_seen is None else f"{now - w.last_seen.timestamp():.0f} s ago",
        )
        for w in found
    ]
    print_table(
        ("worker", "kind", "queues", "concurrency", "running", "processed", "failed", "seen"),
        rows,
        right=(3, 4, 5, 6),
    )
    if not found:
        print("(no workers)")
    return 0
