"""The worker's log lines for each task, and the JSON log format.

One line per task outcome goes to the ``sitq.task`` logger: succeeded, retrying, cancelled,
released at INFO; failed, timed out (with no retry left), lost and refused at WARNING, a
failure with its traceback. A start is logged at DEBUG. Each record carries the fields
``outcome``, ``task_id``, ``function``, ``queue``, ``attempt`` and ``duration`` (seconds), which
:class:`JsonFormatter` writes as keys.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sitq.models import Claim, Finish, Release, Reschedule, Settlement, TaskStatus

task_log = logging.getLogger("sitq.task")

FIELDS = ("outcome", "task_id", "function", "queue", "attempt", "duration", "error", "retry_in")
"""The task fields a record may carry, in the order JSON lines show them."""


def _emit(
    level: int,
    outcome: str,
    claim: Claim,
    duration: float | None,
    text: str,
    *,
    error: str | None = None,
    traceback: str | None = None,
    retry_in: float | None = None,
) -> None:
    if not task_log.isEnabledFor(level):
        return
    where = f"(queue {claim.queue}, attempt {claim.attempts})"
    message = f"task {claim.task_id} {claim.function or '?'} {text} {where}"
    if error:
        message += f": {error}"
    if traceback and level >= logging.WARNING:
        message += "\n" + traceback.rstrip()
    extra: dict[str, Any] = {
        "outcome": outcome,
        "task_id": claim.task_id,
        "function": claim.function,
        "queue": claim.queue,
        "attempt": claim.attempts,
        "duration": None if duration is None else round(duration, 6),
    }
    if error:
        extra["error"] = error
    if retry_in is not None:
        extra["retry_in"] = round(retry_in, 3)
    task_log.log(level, message, extra=extra)


def started(claim: Claim) -> None:
    """A task is about to run (DEBUG)."""
    _emit(logging.DEBUG, "started", claim, None, "started")


def outcome(
    claim: Claim,
    settlement: Settlement | None,
    stop: object,
    duration: float,
    *,
    timed_out: bool,
) -> None:
    """The line for how an attempt ended (nothing for a lost or abandoned one: the lease
    logs a loss where it sees it)."""
    if not task_log.isEnabledFor(logging.WARNING):
        return  # no line at any level: skip the formatting too
    took = f"{duration:.3f} s"
    if isinstance(settlement, Finish):
        status = settlement.status
        if status is TaskStatus.SUCCESS:
            _emit(logging.INFO, "succeeded", claim, duration, f"succeeded in {took}")
        elif status is TaskStatus.CANCELLED:
            _emit(logging.INFO, "cancelled", claim, duration, f"cancelled after {took}")
        else:
            word = "timed out" if timed_out else "failed"
            _emit(
                logging.WARNING,
                "timed_out" if timed_out else "failed",
                claim,
                duration,
                f"{word} after {took}",
                error=settlement.error,
                traceback=settlement.traceback,
            )
    elif isinstance(settlement, Reschedule):
        wait = max(settlement.eta - time.time(), 0.0)
        _emit(
            logging.INFO,
            "retrying",
            claim,
            duration,
            f"{'timed out' if timed_out else 'failed'} after {took}, retrying in {wait:.1f} s",
            error=settlement.error,
            retry_in=wait,
        )
    elif isinstance(settlement, Release):
        _emit(logging.INFO, "released", claim, duration, "released back to its queue at shutdown")


def lost(claim: Claim, duration: float) -> None:
    """The worker lost the task's lease (another claim may run it); it stops the attempt."""
    _emit(
        logging.WARNING,
        "lost",
        claim,
        duration,
        "lost its lease (the task comes back to its queue); stopping this attempt",
    )


def refused(claim: Claim, duration: float) -> None:
    """The backend refused an outcome: the claim was no longer current."""
    _emit(
        logging.WARNING,
        "refused",
        claim,
        duration,
        "outcome refused: its claim is no longer current (another claim holds the task)",
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the task fields a record carries (see ``FIELDS``) and ``exception`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)
