"""What every command shares: the URL argument, opening a backend without creating a store,
exit codes, and printing tables and JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from sitq.backends import backend_from_url
from sitq.backends.base import Backend
from sitq.errors import ConfigurationError

EXIT_OK = 0
"""The command did what it was asked."""
EXIT_REFUSED = 1
"""Something was not found or was refused (or the backend failed)."""
EXIT_USAGE = 2
"""The command line was wrong."""


class Refused(Exception):
    """A command could not do what it was asked (not found, or refused): exit status 1."""


def add_url(parser: argparse.ArgumentParser) -> None:
    """The backend URL argument (or ``SITQ_URL``)."""
    env_url = os.environ.get("SITQ_URL")
    parser.add_argument(
        "url",
        nargs="?" if env_url else None,
        default=env_url,
        help="backend URL, e.g. sqlite:///sitq.db (env SITQ_URL)",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` flag."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def existing_store(url: str) -> Backend:
    """The backend a URL names, refusing a SQLite file that does not exist: only
    ``sitq worker`` creates a store, so a typo in a path is an error, not a new empty file."""
    from sitq.backends.sqlite import SQLiteBackend

    backend = backend_from_url(url)
    if isinstance(backend, SQLiteBackend) and not os.path.exists(backend.db_path):
        raise ConfigurationError(
            f"no sitq database at {os.path.abspath(backend.db_path)}: check the path in the "
            "URL (only `sitq worker` creates one)"
        )
    return backend


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout."""
    print(json.dumps(value, indent=2, default=str))


def print_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, right: Sequence[int] = ()
) -> None:
    """Rows under a header, columns aligned; the columns numbered in ``right`` (counts) are
    right-aligned."""
    table = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for row in table:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())


def fail(message: str) -> None:
    """Print ``sitq: message`` on stderr."""
    print(f"sitq: {message}", file=sys.stderr)
