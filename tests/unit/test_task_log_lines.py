"""A ``sitq.task`` line is the same text whether the worker writes it straight to the handler
``sitq worker`` installed or the record goes through the logging module (as it does once a
user adds a handler or filter of their own)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from sitq.models import Claim, ClaimRef, Finish, Reschedule, TaskStatus
from sitq.observe import logs

CLAIM = Claim(
    task_id="t-1",
    queue="emails",
    payload=b"",
    options="{}",
    priority=0,
    fencing_token=1,
    attempts=2,
    retries=1,
    enqueued_at=0.0,
    started_at=0.0,
    result_ttl=60.0,
    function="shop.tasks.send",
)
SUCCESS = Finish(ClaimRef("t-1", 1), TaskStatus.SUCCESS, b"", None, None, 0.0, 0.0)
FAILED = Finish(ClaimRef("t-1", 1), TaskStatus.FAILED, None, "ValueError: <bad>", "Trace\n", 0, 0)
RETRY = Reschedule(ClaimRef("t-1", 1), eta=1e12, error="OSError: down", traceback=None)


@pytest.fixture
def saved_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, configured = root.handlers[:], root.level, logs._configured
    yield
    root.handlers[:], logs._configured = handlers, configured
    root.setLevel(level)


def _lines(log_format: str, *, through_logging: bool) -> list[str]:
    out = io.StringIO()
    handler = logs.configure("DEBUG", log_format, out)
    blocker = logging.Filter("")  # admits everything, but is a filter on the way
    if through_logging:
        logs.task_log.addFilter(blocker)
    try:
        assert (logs._sole_handler(logging.INFO) is None) == through_logging
        logs.started(CLAIM)
        for settlement in (SUCCESS, FAILED, RETRY):
            logs.outcome(CLAIM, settlement, None, 0.25, timed_out=False)
        logs.lost(CLAIM, 1.5)
        logs.refused(CLAIM, 2.0)
    finally:
        logs.task_log.removeFilter(blocker)
    handler.flush()
    return out.getvalue().splitlines()


def _timeless(line: str) -> str:
    line = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", "", line)
    line = re.sub(r'"time": "[^"]*"', '"time": ""', line)
    return re.sub(r"retrying in [\d.]+ s|\"retry_in\": [\d.e+]+", "", line)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_line_is_the_same_either_way(log_format: str, saved_logging: None) -> None:
    direct = _lines(log_format, through_logging=False)
    usual = _lines(log_format, through_logging=True)
    # Six lines (started, succeeded, failed, retrying, lost, refused); text adds the failure's
    # traceback as a line of its own.
    assert len(direct) == len(usual) == (7 if log_format == "text" else 6)
    assert [_timeless(x) for x in direct] == [_timeless(x) for x in usual]
    if log_format == "json":
        first = json.loads(direct[0])
        assert first["outcome"] == "started" and first["function"] == "shop.tasks.send"
    else:
        assert re.match(
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} DEBUG sitq.task: task t-1 ", direct[0]
        )


def test_a_handler_of_the_users_own_gets_every_line(saved_logging: None) -> None:
    logs.configure("INFO", "text", io.StringIO())
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logs.task_log.addHandler(keep)
    try:
        logs.outcome(CLAIM, SUCCESS, None, 0.25, timed_out=False)
    finally:
        logs.task_log.removeHandler(keep)
    assert len(seen) == 1
    record = seen[0]
    assert record.getMessage().startswith("task t-1 shop.tasks.send succeeded in 0.250 s")
    assert record.__dict__["outcome"] == "succeeded" and record.__dict__["attempt"] == 2


def test_kept_task_lines_come_before_a_later_line_of_another_logger(saved_logging: None) -> None:
    out = io.StringIO()
    handler = logs.configure("INFO", "text", out)
    for _ in range(3):
        logs.outcome(CLAIM, SUCCESS, None, 0.25, timed_out=False)
    logging.getLogger("sitq.worker").info("the worker's own line")
    logs.outcome(CLAIM, FAILED, None, 0.5, timed_out=False)  # a warning: written at once
    assert "failed after 0.500 s" in out.getvalue()
    logs.outcome(CLAIM, SUCCESS, None, 0.75, timed_out=False)
    handler.flush()
    lines = [line for line in out.getvalue().splitlines() if " sitq." in line]
    words = [line.split(": ", 1)[1][:40] for line in lines]
    assert [w.split(" ")[0] for w in words] == ["task", "task", "task", "the", "task", "task"]
    assert "succeeded in 0.250 s" in lines[0] and "succeeded in 0.750 s" in lines[-1]
