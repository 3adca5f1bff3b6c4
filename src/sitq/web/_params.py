"""Reading the query parameters and path parts of the dashboard and its API: each bad value
is a :class:`BadParameter` that names the parameter and what it accepts (the API answers it
with 400 and a JSON body, the pages with a 400 page)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sitq._operate import LIST_ORDER, MAX_LIMIT, PURGE_STATES

__all__ = [
    "DEFAULT_LIMIT",
    "LIST_STATUSES",
    "PURGE_STATUSES",
    "REQUEUE_STATUSES",
    "BadParameter",
    "Listing",
    "check_known",
    "parse_listing",
    "parse_queue",
    "parse_status",
    "single",
]

DEFAULT_LIMIT = 50
"""Tasks per page when ``limit`` is not given."""

LIST_STATUSES = [s.value for s in LIST_ORDER]
"""The statuses a listing takes, in the order its groups come."""

PURGE_STATUSES = list(PURGE_STATES)
"""The ``status`` values of a purge."""

REQUEUE_STATUSES = ["failed", "cancelled"]
"""The ``status`` values of requeueing a queue's tasks."""

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")


@dataclass(frozen=True, slots=True)
class BadParameter(Exception):
    """A parameter whose value the dashboard cannot use."""

    parameter: str
    message: str
    valid: Sequence[str] | None = None

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """The JSON body of the 400 answer."""
        body: dict[str, Any] = {"error": self.message, "parameter": self.parameter}
        if self.valid is not None:
            body["valid"] = list(self.valid)
        return body


@dataclass(frozen=True, slots=True)
class Listing:
    """What a task listing asks for."""

    statuses: list[str] | None
    queue: str | None
    limit: int
    cursor: str | None


def check_known(params: Mapping[str, Any], known: Iterable[str]) -> None:
    """Refuse a parameter the route does not take (a typo would otherwise be ignored)."""
    allowed = sorted(known)
    for name in params:
        if name not in allowed:
            shown = ", ".join(allowed) if allowed else "none"
            raise BadParameter(
                name, f"unknown parameter {name!r}: this route takes {shown}", allowed
            )


def parse_queue(value: str | None, *, required: bool, parameter: str = "queue") -> str | None:
    """A queue name: 1-100 letters, digits, ``_`` or ``-``."""
    if value is None or value == "":
        if required:
            raise BadParameter(parameter, f"{parameter} is required: give a queue name")
        return None
    if not _QUEUE_NAME.fullmatch(value):
        raise BadParameter(
            parameter,
            f"{parameter}={value!r} is not a queue name: use 1-100 letters, digits, '_' or '-'",
        )
    return value


def parse_status(value: str | None, valid: Sequence[str], *, default: str | None = None) -> str:
    """One status among ``valid`` (or ``default`` when absent)."""
    if value is None or value == "":
        if default is not None:
            return default
        raise BadParameter("status", f"status is required: use one of {', '.join(valid)}", valid)
    if value not in valid:
        raise BadParameter(
            "status", f"status={value!r} is not valid here: use one of {', '.join(valid)}", valid
        )
    return value


def parse_listing(values: Mapping[str, Sequence[str]], extra: Iterable[str] = ()) -> Listing:
    """``status`` (repeated or comma-separated; absent or ``all`` for every status),
    ``queue``, ``limit`` (1 to 1000) and ``cursor`` of a task listing; ``extra`` names other
    parameters the caller reads itself."""
    check_known(values, ("status", "queue", "limit", "cursor", *extra))
    statuses: list[str] = []
    for raw in values.get("status", []):
        for item in raw.split(","):
            item = item.strip()
            if item in ("", "all"):
                continue
            statuses.append(parse_status(item, LIST_STATUSES))
    queue = parse_queue(single(values, "queue"), required=False)
    raw_limit = single(values, "limit")
    limit = DEFAULT_LIMIT
    if raw_limit not in (None, ""):
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise BadParameter(
                "limit", f"limit={raw_limit!r} is not valid: use a whole number from 1 to 1000"
            )
    cursor = single(values, "cursor") or None
    return Listing(statuses or None, queue, limit, cursor)


def single(values: Mapping[str, Sequence[str]], name: str) -> str | None:
    """The one value of parameter ``name`` (``None`` when absent; refused when repeated)."""
    found = values.get(name, [])
    if len(found) > 1:
        raise BadParameter(name, f"{name} is given {len(found)} times: give it once")
    return found[0] if found else None
