"""The SQL files of a backend's package: schema migrations and named statements.

A backend's migrations are the files ``NNNN_<what>.sql`` of one folder of its package, version
``NNNN`` each, numbered from 1 without gaps. :class:`Migrations` lists them, says which a store
at a given version still needs (refusing a store newer than this code) and applies those in
order. Reading the store's version, and locking so that one process migrates while the others
wait, stay with each backend: SQLite does it under its write lock, PostgreSQL under an advisory
lock in one transaction. :func:`load_queries` reads a file of named statements.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files

from sitq.errors import BackendError

_FILE_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
# SQL templates name their schema with this placeholder, replaced as plain text (never with
# str.format, so braces in function bodies need no escaping).
SCHEMA_PLACEHOLDER = "{schema}"


@dataclass(frozen=True)
class Migration:
    """One schema step: the version it brings a store to, its file name and its SQL."""

    version: int
    name: str
    sql: str


class Migrations:
    """The numbered ``.sql`` files of ``folder`` in ``package``, in version order."""

    def __init__(self, package: str, folder: str) -> None:
        found: dict[int, Migration] = {}
        for entry in files(package).joinpath(folder).iterdir():
            match = _FILE_NAME.fullmatch(entry.name)
            if match is None:
                continue
            version = int(match.group(1))
            if version in found:
                raise RuntimeError(
                    f"{package}/{folder}: {found[version].name} and {entry.name} "
                    f"both claim version {version}"
                )
            found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
        if sorted(found) != list(range(1, len(found) + 1)):
            raise RuntimeError(
                f"{package}/{folder}: migrations must be numbered 1, 2, ... without gaps; "
                f"found {sorted(found)}"
            )
        self.steps: tuple[Migration, ...] = tuple(found[v] for v in sorted(found))

    @property
    def latest(self) -> int:
        """The schema version this code creates and understands."""
        return len(self.steps)

    def pending(self, current: int, store: str) -> tuple[Migration, ...]:
        """The steps a store at version ``current`` still needs, in order.

        ``store`` names the store in the error raised when it is newer than this code, e.g.
        ``"SQLite database '/x' has schema version"``.
        """
        if current > self.latest:
            raise BackendError(
                f"{store} {current}, newer than this sitq understands ({self.latest}): upgrade sitq"
            )
        return self.steps[current:]

    def apply(self, current: int, store: str, run: Callable[[Migration], object]) -> int:
        """Run each step a store at ``current`` needs, in order; return the version reached."""
        for step in self.pending(current, store):
            run(step)
        return self.latest

    async def apply_async(
        self, current: int, store: str, run: Callable[[Migration], Awaitable[object]]
    ) -> int:
        """:meth:`apply` for a backend whose statements are awaited."""
        for step in self.pending(current, store):
            await run(step)
        return self.latest


def with_schema(sql: str, schema: str) -> str:
    """``sql`` with every ``{schema}`` replaced by ``schema``, an identifier already checked to
    be lowercase letters, digits and underscores (the SQL quotes it where it names a schema)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", schema):
        raise ValueError(f"schema name {schema!r} is not a plain lowercase identifier")
    return sql.replace(SCHEMA_PLACEHOLDER, schema)


_QUERY_NAME = re.compile(r"-- name: ([a-z_][a-z0-9_]*)\s*")


def load_queries(package: str, file: str) -> dict[str, str]:
    """The named statements of ``file`` in ``package``: each starts at a ``-- name: <name>``
    line and runs to the next one (text before the first is the file's own comment). Comment
    lines right under the header and a trailing semicolon are left out of the statement."""
    text = files(package).joinpath(file).read_text(encoding="utf-8")
    queries: dict[str, str] = {}
    # Split before each header; the first part is the file's own comment.
    for part in re.split(r"^(?=-- name: )", text, flags=re.MULTILINE)[1:]:
        header, _, body = part.partition("\n")
        match = _QUERY_NAME.fullmatch(header)
        if match is None:
            raise RuntimeError(f"{package}/{file}: bad statement header {header!r}")
        if match.group(1) in queries:
            raise RuntimeError(f"{package}/{file}: statement {match.group(1)!r} is defined twice")
        # The comment lines under a header document the statement; they are not sent.
        lines = body.strip().splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        queries[match.group(1)] = "\n".join(lines).strip().removesuffix(";").rstrip()
    return queries
