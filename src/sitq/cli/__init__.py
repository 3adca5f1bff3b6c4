"""The command line: ``sitq worker`` runs a worker; ``info``, ``tasks``, ``show`` and
``workers`` look at a backend; ``requeue``, ``cancel`` and ``purge`` act on its tasks;
``move`` moves queued work to another store; ``web`` serves the dashboard (``sitq[web]``).

Exit status: 0 done, 1 not found or refused (or the backend failed), 2 a usage error.

Every worker option can also come from an environment variable: ``SITQ_URL``, ``SITQ_KIND``,
``SITQ_CONCURRENCY``, ``SITQ_QUEUES`` (comma-separated), ``SITQ_IMPORTS`` (comma-separated),
``SITQ_SERIALIZER``, ``SITQ_LEASE``, ``SITQ_SHUTDOWN_TIMEOUT``, ``SITQ_POLL_INTERVAL``,
``SITQ_PURGE_INTERVAL``, ``SITQ_CONNECT_TIMEOUT``, ``SITQ_LOG_LEVEL``, ``SITQ_LOG_FORMAT``,
``SITQ_METRICS_PORT`` and ``SITQ_METRICS_HOST``.
A flag given on the command line wins over the environment.
``SITQ_SECRET`` (comma-separated keys, the first signs) makes the serializer (pickle or json)
sign and verify payloads; it has no flag, since a command line is visible to every user of the
machine. ``SITQ_JSON_MODULES`` (comma-separated) is the json serializer's allow-list of modules.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import sitq
from sitq.cli import _act, _inspect, _move, _web, _worker
from sitq.cli._common import EXIT_REFUSED, EXIT_USAGE, Refused, fail
from sitq.errors import ConfigurationError, SitqError

__all__ = ["build_parser", "main"]

_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "info": _inspect.info,
    "tasks": _inspect.tasks,
    "show": _inspect.show,
    "workers": _inspect.workers,
    "requeue": _act.requeue,
    "cancel": _act.cancel,
    "purge": _act.purge,
    "move": _move.run,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``sitq``."""
    parser = argparse.ArgumentParser(
        prog="sitq",
        description="sitq: run workers, look at queues and act on their tasks.",
        epilog="Settings also come from SITQ_* environment variables (see `sitq worker -h`). "
        "Exit status: 0 done, 1 not found or refused, 2 usage error.",
    )
    parser.add_argument("--version", action="version", version=f"sitq {sitq.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _worker.add_parser(sub)
    _inspect.add_parsers(sub)
    _act.add_parsers(sub)
    _move.add_parser(sub)
    _web.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sitq`` command and ``python -m sitq``."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "worker":
            return _worker.run(args)
        if args.command == "web":
            return _web.run(args)
        return asyncio.run(_COMMANDS[args.command](args))
    except ConfigurationError as exc:
        fail(str(exc))
        return EXIT_USAGE
    except Refused as exc:
        fail(str(exc))
        return EXIT_REFUSED
    except SitqError as exc:
        fail(str(exc))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
