"""The command line: ``sitq worker URL`` runs a worker, ``sitq info URL`` shows the queues.

Every option can also come from an environment variable: ``SITQ_URL``, ``SITQ_KIND``,
``SITQ_CONCURRENCY``, ``SITQ_QUEUES`` (comma-separated), ``SITQ_IMPORTS`` (comma-separated),
``SITQ_SERIALIZER``, ``SITQ_LEASE``, ``SITQ_SHUTDOWN_TIMEOUT``, ``SITQ_POLL_INTERVAL``,
``SITQ_PURGE_INTERVAL``, ``SITQ_CONNECT_TIMEOUT`` and ``SITQ_LOG_LEVEL``. A flag given on the
command line wins over the environment.
``SITQ_SECRET`` (comma-separated keys, the first signs) makes the serializer (pickle or json)
sign and verify payloads; it has no flag, since a command line is visible to every user of the
machine. ``SITQ_JSON_MODULES`` (comma-separated) is the json serializer's allow-list of modules.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence

from sitq._loop import LOOPS, resolve_loop
from sitq._loop import run as run_loop
from sitq.backends import backend_from_url, redact_url
from sitq.cron import CronInfo
from sitq.errors import SitqError
from sitq.serializers import Serializer, serializer_from_name
from sitq.worker import PURGE_INTERVAL, WORKER_KINDS


def _env_list(name: str) -> list[str]:
    value = os.environ.get(name, "")
    return [item.strip() for item in value.split(",") if item.strip()]


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"sitq: {name}={value!r} is not a number") from None


def _serializer(name: str) -> Serializer:
    # Comma-separated keys: the first signs, all verify. Never a flag: argv is visible.
    keys = _env_list("SITQ_SECRET")
    modules = _env_list("SITQ_JSON_MODULES")
    return serializer_from_name(name, secret=keys or None, modules=modules or None)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sitq``."""
    parser = argparse.ArgumentParser(
        prog="sitq",
        description="sitq: run workers and inspect queues.",
        epilog="Settings also come from SITQ_* environment variables (see `sitq worker -h`).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    env_url = os.environ.get("SITQ_URL")

    worker = sub.add_parser(
        "worker",
        help="run a worker until SIGINT/SIGTERM",
        description="Run a worker until SIGINT or SIGTERM, then shut down gracefully "
        "(a second SIGINT stops at once).",
    )
    worker.add_argument(
        "url",
        nargs="?" if env_url else None,
        default=env_url,
        help="backend URL, e.g. sqlite:///sitq.db (env SITQ_URL)",
    )
    worker.add_argument(
        "--kind",
        choices=sorted(WORKER_KINDS),
        default=os.environ.get("SITQ_KIND", "async"),
        help="where tasks run: the event loop, threads or processes (env SITQ_KIND; default async)",
    )
    worker.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=int(os.environ["SITQ_CONCURRENCY"]) if os.environ.get("SITQ_CONCURRENCY") else None,
        help="tasks at once (env SITQ_CONCURRENCY; default 10, or one per CPU for --kind process)",
    )
    worker.add_argument(
        "-q",
        "--queue",
        dest="queues",
        action="append",
        help="a queue to work on; repeat for several (env SITQ_QUEUES, "
        "comma-separated; default: default)",
    )
    worker.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE",
        help="import a module first, e.g. the one defining your tasks; repeat "
        "for several (env SITQ_IMPORTS)",
    )
    worker.add_argument(
        "--serializer",
        choices=["pickle", "json"],
        default=os.environ.get("SITQ_SERIALIZER", "pickle"),
        help="must match the enqueuing side (env SITQ_SERIALIZER)",
    )
    worker.add_argument(
        "--lease",
        type=float,
        default=_env_float("SITQ_LEASE", 30.0),
        help="seconds a claim holds without a heartbeat (env SITQ_LEASE)",
    )
    worker.add_argument(
        "--shutdown-timeout",
        type=float,
        default=_env_float("SITQ_SHUTDOWN_TIMEOUT", 30.0),
        help="seconds to let running tasks finish on shutdown (env SITQ_SHUTDOWN_TIMEOUT)",
    )
    worker.add_argument(
        "--poll-interval",
        type=float,
        default=_env_float("SITQ_POLL_INTERVAL", 1.0),
        help="longest idle wait between checks (env SITQ_POLL_INTERVAL)",
    )
    worker.add_argument(
        "--purge-interval",
        type=float,
        default=_env_float("SITQ_PURGE_INTERVAL", PURGE_INTERVAL),
        metavar="SECONDS",
        help="seconds between sweeps that remove expired results (env SITQ_PURGE_INTERVAL; "
        f"default {PURGE_INTERVAL:g})",
    )
    worker.add_argument(
        "--no-cron",
        dest="cron",
        action="store_false",
        default=os.environ.get("SITQ_CRON", "1").lower() not in ("0", "false", "no", "off"),
        help="do not drive cron schedules in this worker (env SITQ_CRON=0); any other "
        "worker may, and each tick still runs once",
    )
    worker.add_argument(
        "--connect-timeout",
        type=float,
        default=_env_float("SITQ_CONNECT_TIMEOUT", -1.0),
        metavar="SECONDS",
        help="while the backend is unreachable, retry connecting for this long, then exit "
        "(env SITQ_CONNECT_TIMEOUT; default: retry until it is up; 0 tries once)",
    )
    worker.add_argument(
        "--loop",
        choices=LOOPS,
        default=os.environ.get("SITQ_LOOP", "auto"),
        help="event loop: uvloop where installed (pip install 'sitq[uvloop]'), else asyncio "
        "(env SITQ_LOOP; default auto)",
    )
    worker.add_argument(
        "--log-level",
        default=os.environ.get("SITQ_LOG_LEVEL", "INFO"),
        help="logging level (env SITQ_LOG_LEVEL)",
    )

    info = sub.add_parser("info", help="print per-queue task counts")
    info.add_argument(
        "url", nargs="?" if env_url else None, default=env_url, help="backend URL (env SITQ_URL)"
    )
    return parser


def _import_modules(modules: Sequence[str]) -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise SystemExit(f"sitq: cannot import {module!r}: {exc}") from exc


async def _run_worker(args: argparse.Namespace) -> None:
    backend = backend_from_url(args.url)
    kind = WORKER_KINDS[args.kind]
    queues = args.queues or _env_list("SITQ_QUEUES") or ["default"]
    concurrency = args.concurrency
    if concurrency is None and args.kind != "process":
        concurrency = 10
    worker = kind(
        backend,
        _serializer(args.serializer),
        concurrency,
        queues=queues,
        lease=args.lease,
        shutdown_timeout=args.shutdown_timeout,
        poll_interval=args.poll_interval,
        cron=args.cron,
        purge_interval=args.purge_interval,
    )
    print(
        f"sitq {args.kind} worker {worker.worker_id} on {redact_url(backend.describe())}, "
        f"queues {', '.join(worker.queues)}, concurrency {worker.concurrency}, "
        f"{resolve_loop(args.loop)} loop",
        file=sys.stderr,
        flush=True,
    )
    await worker.run(connect_timeout=None if args.connect_timeout < 0 else args.connect_timeout)


async def _info(args: argparse.Namespace) -> None:
    backend = backend_from_url(args.url)
    await backend.connect()
    try:
        stats = await backend.stats(time.time())
        crons = [CronInfo.from_record(r) for r in await backend.list_crons()]
    finally:
        await backend.close()
    print(f"{redact_url(backend.describe())}")
    header = ("queue", "pending", "scheduled", "running", "succeeded", "failed", "cancelled")
    rows = [header] + [
        (
            s.queue,
            str(s.pending),
            str(s.scheduled),
            str(s.running),
            str(s.succeeded),
            str(s.failed),
            str(s.cancelled),
        )
        for s in stats
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if not stats:
        print("(no tasks)")
    if crons:
        print()
        print("cron schedules:")
        for c in crons:
            upcoming = c.next_run.isoformat() if c.next_run else "never"
            print(
                f"  {c.name}  {c.expression!r} {c.timezone}  -> {c.func} on {c.queue}, "
                f"next {upcoming}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sitq`` command and ``python -m sitq``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "worker":
            logging.basicConfig(
                level=args.log_level.upper(),
                stream=sys.stderr,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            _import_modules(args.imports or _env_list("SITQ_IMPORTS"))
            run_loop(_run_worker(args), args.loop)
        else:
            asyncio.run(_info(args))
    except SitqError as exc:
        print(f"sitq: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
