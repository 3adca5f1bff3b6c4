"""The worker's log lines for each task, and the JSON log format.

One line per task outcome goes to the ``sitq.task`` logger: succeeded, retrying, cancelled,
released at INFO; failed, timed out (with no retry left), lost and refused at WARNING, a
failure with its traceback. A start is logged at DEBUG. Each record carries the fields
``outcome``, ``task_id``, ``function``, ``queue``, ``attempt`` and ``duration`` (seconds), which
:class:`JsonFormatter` writes as keys.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
from json.encoder import encode_basestring as _encode_string
from typing import Any

from sitq.models import Claim, Finish, Release, Reschedule, Settlement, TaskStatus

task_log = logging.getLogger("sitq.task")
_root = logging.getLogger()
_configured: LineHandler | None = None
"""The handler :func:`configure` installed last, if any."""

FIELDS = ("outcome", "task_id", "function", "queue", "attempt", "duration", "error", "retry_in")
"""The task fields a record may carry, in the order JSON lines show them."""


_Line = tuple[
    float, int, str, Claim, "float | None", "str | None", "str | None", "str | None", "float | None"
]
"""A task line not written yet: time, level, outcome, claim, duration, text (``None`` for
"succeeded in <duration>"), error, traceback, retry_in."""


def _emit(
    level: int,
    outcome: str,
    claim: Claim,
    duration: float | None,
    text: str | None,
    *,
    error: str | None = None,
    traceback: str | None = None,
    retry_in: float | None = None,
) -> None:
    if not task_log.isEnabledFor(level):
        return
    handler = _sole_handler(level)
    if handler is not None:
        line = (time.time(), level, outcome, claim, duration, text, error, traceback, retry_in)
        handler.later(line)
        return
    task_log.handle(
        _TaskRecord(
            level,
            _message(level, claim, duration, text, error, traceback),
            _fields(outcome, claim, duration, error, retry_in),
        )
    )


def _message(
    level: int,
    claim: Claim,
    duration: float | None,
    text: str | None,
    error: str | None,
    traceback: str | None,
) -> str:
    if text is None:
        text = f"succeeded in {duration:.3f} s"
    message = (
        f"task {claim.task_id} {claim.function or '?'} {text} "
        f"(queue {claim.queue}, attempt {claim.attempts})"
    )
    if error:
        message += f": {error}"
    if traceback and level >= logging.WARNING:
        message += "\n" + traceback.rstrip()
    return message


def _fields(
    outcome: str,
    claim: Claim,
    duration: float | None,
    error: str | None,
    retry_in: float | None,
) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "outcome": outcome,
        "task_id": claim.task_id,
        "function": claim.function,
        "queue": claim.queue,
        "attempt": claim.attempts,
        "duration": None if duration is None else round(duration, 6),
    }
    if error:
        fields["error"] = error
    if retry_in is not None:
        fields["retry_in"] = round(retry_in, 3)
    return fields


def _record(line: _Line) -> _TaskRecord:
    """The record of a task line not written yet (for a formatter of another kind)."""
    created, level, outcome, claim, duration, text, error, traceback, retry_in = line
    record = _TaskRecord(
        level,
        _message(level, claim, duration, text, error, traceback),
        _fields(outcome, claim, duration, error, retry_in),
    )
    record.created = created
    record.msecs = int(created * 1000) % 1000 + 0.0
    return record


def _sole_handler(level: int) -> LineHandler | None:
    """The :class:`LineHandler` that :func:`configure` installed, when it is the only place a
    ``sitq.task`` record at ``level`` would go and nothing on the way filters records: the
    line can then be written straight to it, with no ``LogRecord`` and no trip through the
    logging module's handler chain. ``None`` when logging is set up any other way (records
    then take the usual path)."""
    handler = _configured
    if handler is None or level < handler.level:
        return None
    if task_log.handlers or task_log.filters or not task_log.propagate:
        return None
    parent = task_log.parent
    while parent is not None and parent is not _root:
        if parent.handlers or parent.filters or not parent.propagate:
            return None
        parent = parent.parent
    if _root.handlers != [handler] or _root.filters or handler.filters:
        return None
    return handler


_LOGGING_START: float = getattr(logging, "_startTime", time.time())


class _TaskRecord(logging.LogRecord):
    """A ``sitq.task`` record, made directly: the same attributes as one ``Logger.log``
    makes, without the work those lines never need (finding the caller's file and line,
    reading thread and process names), since a worker makes one per task."""

    def __init__(self, level: int, message: str, fields: dict[str, Any]) -> None:
        created = time.time()
        self.name = task_log.name
        self.msg = message
        self.args = ()
        self.levelname = logging.getLevelName(level)
        self.levelno = level
        self.pathname = __file__
        self.filename = "_logs.py"
        self.module = "_logs"
        self.exc_info = None
        self.exc_text = None
        self.stack_info = None
        self.lineno = 0
        self.funcName = "outcome"
        self.created = created
        self.msecs = int(created * 1000) % 1000 + 0.0
        self.relativeCreated = (created - _LOGGING_START) * 1000
        self.thread = None
        self.threadName = None
        self.processName = None
        self.process = None
        self.taskName = None
        self.__dict__.update(fields)


def started(claim: Claim) -> None:
    """A task is about to run (DEBUG)."""
    if task_log.isEnabledFor(logging.DEBUG):
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
    if isinstance(settlement, Finish):
        status = settlement.status
        if status is TaskStatus.SUCCESS:
            _emit(logging.INFO, "succeeded", claim, duration, None)
            return
        took = f"{duration:.3f} s"
        if status is TaskStatus.CANCELLED:
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
        took = f"{duration:.3f} s"
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
    elif isinstance(settlement, Release) and settlement.delay > 0:
        _emit(
            logging.DEBUG,
            "rate_limited",
            claim,
            None,
            f"its rate limit has no free slot; back to its queue for {settlement.delay:.3f} s",
            retry_in=settlement.delay,
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


class _SecondCache:
    """The text of the current second, made once per second (``strftime`` is the dearest
    part of a line)."""

    __slots__ = ("_fmt", "_second", "_text", "_utc")

    def __init__(self, fmt: str, *, utc: bool) -> None:
        self._second = -1
        self._text = ""
        self._fmt = fmt
        self._utc = utc

    def text(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            moment = time.gmtime(second) if self._utc else time.localtime(second)
            self._second, self._text = second, time.strftime(self._fmt, moment)
        return self._text


class TextFormatter(logging.Formatter):
    """``2026-12-07 10:12:03,512 INFO sitq.task: message`` (local time), with a traceback
    on the lines that carry one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.seconds = _SecondCache("%Y-%m-%d %H:%M:%S", utc=False)
        """The text of the current second (local time)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """The record's local time to the millisecond."""
        return f"{self.seconds.text(record.created)},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        """The line (one f-string: the same text as the format above, made faster)."""
        line = (
            f"{self.seconds.text(record.created)},{int(record.msecs):03d} "
            f"{record.levelname} {record.name}: {record.getMessage()}"
        )
        return _with_traceback(self, line, record)

    def task_lines(self, lines: list[_Line]) -> str:
        """The text :meth:`format` makes of these task lines' records, each ending in a
        newline."""
        out = []
        seconds = self.seconds.text
        for created, level, _, claim, duration, text, error, traceback, _ in lines:
            message = _message(level, claim, duration, text, error, traceback)
            out.append(
                f"{seconds(created)},{int(created * 1000) % 1000:03d} "
                f"{logging.getLevelName(level)} sitq.task: {message}\n"
            )
        return "".join(out)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    the task fields a record carries (see ``FIELDS``) and ``exception`` if any."""

    def __init__(self) -> None:
        super().__init__()
        self._seconds = _SecondCache("%Y-%m-%dT%H:%M:%S", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        parts = self._parts(
            record.created, record.levelname, record.name, record.getMessage(), record.__dict__
        )
        if record.exc_info or record.stack_info:
            parts.append(f'"exception": {_json_value(_with_traceback(self, "", record)[1:])}')
        return "{" + ", ".join(parts) + "}"

    def task_lines(self, lines: list[_Line]) -> str:
        """The text :meth:`format` makes of these task lines' records, each ending in a
        newline: the fields ``_fields`` gives a record, in the order of ``FIELDS``, written
        straight from the line's values."""
        out = []
        seconds = self._seconds.text
        for created, level, outcome, claim, duration, text, error, traceback, retry_in in lines:
            message = _message(level, claim, duration, text, error, traceback)
            line = (
                f'{{"time": "{seconds(created)}.{int(created * 1000) % 1000:03d}Z", '
                f'"level": "{logging.getLevelName(level)}", "logger": "sitq.task", '
                f'"message": {_encode_string(message)}, "outcome": "{outcome}", '
                f'"task_id": {_encode_string(claim.task_id)}, '
                f'"function": {_encode_string(claim.function)}, '
                f'"queue": {_encode_string(claim.queue)}, "attempt": {claim.attempts}'
            )
            if duration is not None:
                line += f', "duration": {round(duration, 6)!r}'
            if error:
                line += f', "error": {_encode_string(error)}'
            if retry_in is not None:
                line += f', "retry_in": {round(retry_in, 3)!r}'
            out.append(line + "}\n")
        return "".join(out)

    def _parts(
        self, created: float, level: str, logger: str, message: str, fields: dict[str, Any]
    ) -> list[str]:
        parts = [
            f'"time": "{self._seconds.text(created)}.{int(created * 1000) % 1000:03d}Z"',
            f'"level": "{level}"',
            f'"logger": {_json_value(logger)}',
            f'"message": {_json_value(message)}',
        ]
        for name in FIELDS:
            value = fields.get(name)
            if value is not None:
                parts.append(f'"{name}": {_json_value(value)}')
        return parts


def _json_value(value: Any) -> str:
    """One JSON value (strings through the C encoder: the common case, and the fast one)."""
    if isinstance(value, str):
        return _encode_string(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return repr(value)
    return json.dumps(value, default=str)


def _with_traceback(formatter: logging.Formatter, line: str, record: logging.LogRecord) -> str:
    """``line`` with the record's exception and stack, as ``logging.Formatter`` adds them."""
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    if record.exc_text:
        line += "\n" + record.exc_text
    if record.stack_info:
        line += "\n" + formatter.formatStack(record.stack_info)
    return line


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that flushes the stream only for a warning or worse, or when
    ``flush_interval`` seconds have passed since the last flush (and when ``flush()`` is
    called, which ``sitq worker`` does as often): a line per task then costs a write into a
    buffer, not a system call. An INFO line therefore reaches the terminal up to half a second
    late, and may come after output the process wrote straight to stderr meanwhile.

    The worker's own task lines (see ``_sole_handler``) are kept as plain tuples and made into
    text together, at the next flush or the next line of any other kind, in one tight loop:
    the same lines, in the same order, with the time each line was logged, for a fraction of
    what making each one amid the worker's work costs."""

    def __init__(self, stream: Any, flush_interval: float = 0.5) -> None:
        super().__init__(stream)
        self.origin: Any = stream
        self.flush_interval = flush_interval
        self._flushed = time.time()
        self._later: list[_Line] = []

    def later(self, line: _Line) -> None:
        """Keep a task line to write at the next flush (at once for a warning or worse)."""
        self._later.append(line)
        if (
            line[1] >= logging.WARNING
            or line[0] - self._flushed >= self.flush_interval
            or len(self._later) >= 1024
        ):
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        """Write the line (after the task lines kept before it); flush if it is a warning or
        the last flush is old."""
        try:
            self._write_later()
            self.stream.write(self.format(record) + self.terminator)
            if (
                record.levelno >= logging.WARNING
                or time.time() - self._flushed >= self.flush_interval
            ):
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _write_later(self) -> None:
        """Write the task lines kept so far (the caller holds the lock)."""
        if not self._later:
            return
        lines, self._later = self._later, []
        formatter = self.formatter
        try:
            if isinstance(formatter, TextFormatter | JsonFormatter):
                text = formatter.task_lines(lines)
            else:
                fmt = formatter or logging.Formatter()
                text = "".join(fmt.format(_record(line)) + "\n" for line in lines)
            self.stream.write(text)
        except RecursionError:
            raise
        except Exception:
            self.handleError(_record(lines[0]))

    def flush(self) -> None:
        """Write the task lines kept so far and flush the stream now."""
        with self.lock:  # type: ignore[union-attr]
            self._write_later()
            self._flushed = time.time()
        super().flush()


def _buffered(stream: Any) -> Any:
    """A block-buffered writer on ``stream``'s file descriptor: ``sys.stderr`` is line
    buffered, which would make every line a system call. The handler flushes it itself."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # not a file (a test's capture): write to it as it is
    raw = io.FileIO(fd, "w", closefd=False)
    return io.TextIOWrapper(
        io.BufferedWriter(raw, 1 << 16),
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors="backslashreplace",
    )


def configure(level: str, log_format: str, stream: Any) -> LineHandler:
    """Send every log record at ``level`` or above to ``stream`` as text or JSON lines, the
    way ``sitq worker`` does; the handler, for the caller to flush now and then.

    The process is the worker's own, so records skip what its lines never show: the caller's
    file and line, and thread and process names (the ``logging`` module's documented speed-ups).
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LineHandler(_buffered(stream))
    handler.origin = stream  # the buffer writes to its descriptor: keep the file object open
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    global _configured
    _configured = handler
    _root.handlers[:] = [handler]
    _root.setLevel(level)
    return handler
