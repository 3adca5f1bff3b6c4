"""``sitq requeue``, ``sitq cancel`` and ``sitq purge``: acting on tasks."""

from __future__ import annotations

import argparse

from sitq.cli._common import Refused, add_url, existing_store
from sitq.errors import ConfigurationError, TaskNotFound
from sitq.queue import TaskQueue

PURGE_STATUSES = ("pending", "failed", "cancelled", "success", "finished")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The options of ``requeue``, ``cancel`` and ``purge``."""
    requeue = sub.add_parser(
        "requeue",
        help="run failed or cancelled tasks again (same id, attempts from 0)",
        description="Requeue tasks by id, or every failed task (of one queue) with --failed.",
    )
    add_url(requeue)
    requeue.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="the tasks to requeue")
    requeue.add_argument("--failed", action="store_true", help="requeue every failed task")
    requeue.add_argument("-q", "--queue", help="with --failed: only this queue's")

    cancel = sub.add_parser("cancel", help="cancel pending tasks, stop running ones")
    add_url(cancel)
    cancel.add_argument("task_ids", nargs="+", metavar="TASK_ID", help="the tasks to cancel")

    purge = sub.add_parser(
        "purge",
        help="remove a queue's tasks in one state, for good",
        description="Remove the tasks of one queue in one state. Running tasks are never "
        "purged (cancel them). Needs --yes.",
    )
    add_url(purge)
    purge.add_argument("-q", "--queue", required=True, help="the queue to purge")
    purge.add_argument(
        "--status",
        choices=PURGE_STATUSES,
        default="pending",
        help="which tasks: pending (scheduled included; the default), failed, cancelled, "
        "success, or finished (the last three)",
    )
    purge.add_argument("--yes", action="store_true", help="really remove them")


async def requeue(args: argparse.Namespace) -> int:
    """``sitq requeue``."""
    if args.failed == bool(args.task_ids):
        raise ConfigurationError("give task ids, or --failed (not both)")
    if args.queue and not args.failed:
        raise ConfigurationError("-q/--queue goes with --failed")
    async with TaskQueue(existing_store(args.url)) as queue:
        if args.failed:
            count = await queue.requeue_many("failed", args.queue)
            print(f"requeued {count} failed task{'' if count == 1 else 's'}")
            return 0
        problems = []
        for task_id in args.task_ids:
            try:
                if await queue.requeue(task_id):
                    print(f"requeued {task_id}")
                    continue
                status = await queue.get_status(task_id)
                problems.append(
                    f"{task_id} is {status}: only failed or cancelled tasks can be requeued"
                )
            except TaskNotFound:
                problems.append(f"no task {task_id!r} (unknown, or its result has expired)")
    if problems:
        raise Refused("; ".join(problems))
    return 0


async def cancel(args: argparse.Namespace) -> int:
    """``sitq cancel``."""
    problems = []
    async with TaskQueue(existing_store(args.url)) as queue:
        for task_id in args.task_ids:
            try:
                if await queue.cancel(task_id):
                    print(f"cancelled {task_id}")
                else:
                    problems.append(f"{task_id} had already finished")
            except TaskNotFound:
                problems.append(f"no task {task_id!r} (unknown, or its result has expired)")
    if problems:
        raise Refused("; ".join(problems))
    return 0


async def purge(args: argparse.Namespace) -> int:
    """``sitq purge``."""
    if not args.yes:
        raise ConfigurationError(
            f"purge removes the {args.status} tasks of queue {args.queue!r} for good: "
            "add --yes to do it"
        )
    async with TaskQueue(existing_store(args.url)) as queue:
        count = await queue.purge(args.queue, args.status)
    print(f"removed {count} {args.status} task{'' if count == 1 else 's'} from {args.queue}")
    return 0
