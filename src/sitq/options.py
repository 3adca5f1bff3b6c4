"""Task options: what ``TaskQueue(...)`` takes as defaults and ``queue.options(...)`` per task.

Every option is checked where it is given, with an error that names it and what is valid.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from sitq.errors import ConfigurationError, check_seconds
from sitq.models import MAX_ETA_TEXT, MAX_ETA_TIMESTAMP
from sitq.retry import NO_RETRY, FixedBackoff, RetryPolicy

DEFAULT_RESULT_TTL = 86_400.0
DEFAULT_FAILURE_TTL = 7 * 86_400.0
DEFAULT_MAX_DELIVERIES = 5
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")
_PRIORITY_RANGE = (-(2**31), 2**31 - 1)
OPTION_NAMES = frozenset(
    {
        "queue",
        "retry",
        "timeout",
        "priority",
        "task_id",
        "result_ttl",
        "failure_ttl",
        "max_deliveries",
        "concurrency_key",
        "concurrency_limit",
        "debounce",
        "rate_limit",
        "rate_key",
    }
)
MAX_RATE_COUNT = 1000
"""The most starts a ``rate_limit`` may allow per period (each is a slot lock the worker looks
through when a task of the key starts)."""
_RATE = re.compile(r"([0-9]{1,10})/([smh])")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE_KEY_MAX = 200


def check_queue_name(name: Any, what: str = "queue") -> str:
    """A valid queue name (1-100 letters, digits, ``_``, ``-``) or :class:`ConfigurationError`."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise ConfigurationError(
            f"{what}={name!r} is not a valid queue name: use 1-100 letters, digits, '_' or '-' "
            "(the same names must work on every backend)"
        )
    return name


def check_name(value: Any, label: str) -> str:
    """A valid task id, cron name or lock name: 1-255 printable characters without whitespace
    (every backend encodes such names as its store needs). ``label`` names it in the error."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 255
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise ConfigurationError(
            f"{label} is not valid: use 1-255 printable characters without spaces"
        )
    return value


def check_task_id(task_id: Any) -> str:
    """A valid explicit task id: 1-255 printable characters without whitespace, as a plain
    ``str`` (a :class:`~sitq.TaskId` given back as ``task_id`` is stored as the string it is)."""
    return str(check_name(task_id, f"task_id={task_id!r}"))


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """The options of one task; see docs/contract.md, Task options, for each."""

    queue: str = "default"
    retry: RetryPolicy = NO_RETRY
    timeout: float | None = None
    priority: int = 0
    task_id: str | None = None
    result_ttl: float = DEFAULT_RESULT_TTL
    failure_ttl: float | None = DEFAULT_FAILURE_TTL
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    debounce: float | None = None
    """Seconds: enqueueing ``task_id`` while it is pending moves it to now + ``debounce`` and
    replaces its call (see docs/contract.md, Debounce). Read at enqueue, never stored."""
    rate_limit: str | None = None
    rate_key: str | None = None

    def merge(self, **changes: Any) -> TaskOptions:
        """These options with ``changes`` applied, each one checked."""
        unknown = set(changes) - OPTION_NAMES
        if unknown:
            raise ConfigurationError(
                f"unknown task option(s) {sorted(unknown)}; valid options are "
                f"{sorted(OPTION_NAMES)}"
            )
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            checked[name] = _check(name, value)
        merged = replace(self, **checked)
        if (merged.concurrency_key is None) != (merged.concurrency_limit is None):
            raise ConfigurationError(
                "concurrency_key and concurrency_limit go together: give both or neither"
            )
        if (merged.rate_limit is None) != (merged.rate_key is None):
            given, missing = ("rate_limit", "rate_key")
            if merged.rate_limit is None:
                given, missing = missing, given
            raise ConfigurationError(
                f"{given}={getattr(merged, given)!r} needs {missing}: rate_limit and rate_key "
                "go together (e.g. options(rate_limit='100/m', rate_key='api.example.com')); "
                "give both or neither"
            )
        return merged

    def engine_options(self, trace: str | None = None) -> str:
        """The options the engine needs at run time, as the JSON text stored with the task;
        ``trace`` is the task's trace context (a JSON object's text), stored last under
        ``"trace"`` when given."""
        text = _engine_options_text(self.timeout, self.retry, self.max_deliveries, self.failure_ttl)
        if self.rate_limit is not None:
            text = _with_rate(text, self.rate_limit, self.rate_key)
        return text if trace is None else f"{text[:-1]}{TRACE_MARK}{trace}}}"


TRACE_MARK = ',"trace":'
"""Where the trace context starts in a task's options text: it is written last, after the
options every enqueue writes (see ``sitq.observe.tracing``)."""


def stored_trace(text: str) -> str | None:
    """The trace context stored in a task's options text (a JSON object's text), or ``None``."""
    i = text.find(TRACE_MARK)
    return None if i < 0 else text[i + len(TRACE_MARK) : -1]


@functools.lru_cache(maxsize=256)
def _engine_options_text(
    timeout: float | None, retry: RetryPolicy, max_deliveries: int, failure_ttl: float | None
) -> str:
    return json.dumps(
        {
            "v": 1,
            "timeout": timeout,
            "retry": None if retry == NO_RETRY else retry.to_dict(),
            "max_deliveries": max_deliveries,
            "failure_ttl": failure_ttl,
        },
        separators=(",", ":"),
    )


@functools.lru_cache(maxsize=256)
def _with_rate(text: str, rate_limit: str, rate_key: str | None) -> str:
    """The options text with the rate limit added (only tasks that have one carry it)."""
    rate = json.dumps({"rate_limit": rate_limit, "rate_key": rate_key}, separators=(",", ":"))
    return f"{text[:-1]},{rate[1:]}"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A task's rate limit: at most ``count`` tasks with ``key`` start per ``period`` seconds,
    across every worker (see docs/contract.md, Rate limits)."""

    key: str
    count: int
    period: float
    text: str
    """The rate as given, e.g. ``"100/m"``."""

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The names of the rate's ``count`` slot locks; a start holds one for ``period``."""
        return _slot_names(self.key, self.text, self.count)

    @property
    def gap_name(self) -> str:
        """The name of the lock a start holds for ``period / count``: starts are spread out,
        one per such gap, rather than ``count`` at once."""
        return f"sitq:rate:{self.key}:{self.text}:gap"

    @property
    def gap(self) -> float:
        """Seconds between two starts of the rate: ``period / count``."""
        return self.period / self.count


@functools.lru_cache(maxsize=1024)
def _slot_names(key: str, text: str, count: int) -> tuple[str, ...]:
    return tuple(f"sitq:rate:{key}:{text}:{i}" for i in range(count))


def parse_rate(value: Any) -> tuple[int, float]:
    """``(count, period in seconds)`` of a rate text such as ``"100/m"``, or
    :class:`ConfigurationError` naming what is wrong."""
    if not isinstance(value, str):
        raise ConfigurationError(
            f"rate_limit must be a str such as '20/s', '100/m' or '5/h' (starts per second, "
            f"minute or hour), not {value!r}"
        )
    match = _RATE.fullmatch(value)
    if match is None:
        raise ConfigurationError(
            f"rate_limit={value!r} is not a rate: write '<count>/<period>', the period one of "
            "s, m, h (e.g. '20/s', '100/m', '5/h')"
        )
    count = int(match.group(1))
    if not 1 <= count <= MAX_RATE_COUNT:
        hint = (
            "; write a high rate over a shorter period ('100/s', not '6000/m')"
            if count > MAX_RATE_COUNT
            else ""
        )
        raise ConfigurationError(
            f"rate_limit={value!r}: the count must be 1 to {MAX_RATE_COUNT} starts per period{hint}"
        )
    return count, _PERIODS[match.group(2)]


def check_rate_key(value: Any) -> str:
    """A valid ``rate_key``: 1-200 printable characters without whitespace."""
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= _RATE_KEY_MAX
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise ConfigurationError(
            f"rate_key={value!r} is not valid: use a str of 1-{_RATE_KEY_MAX} printable "
            "characters without spaces (such as the API's host name)"
        )
    return value


def _check(name: str, value: Any) -> Any:
    if name == "queue":
        return check_queue_name(value)
    if name == "retry":
        if value is None:
            return NO_RETRY
        if not isinstance(value, RetryPolicy):
            raise ConfigurationError(f"retry must be a RetryPolicy or None, not {value!r}")
        return _check_total_wait(value)
    if name == "timeout":
        return check_seconds("timeout", value, allow_none=True)
    if name == "result_ttl":
        return check_seconds("result_ttl", value)
    if name == "failure_ttl":
        return check_seconds("failure_ttl", value, allow_none=True)
    if name == "priority":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"priority must be an int, not {value!r}")
        if not _PRIORITY_RANGE[0] <= value <= _PRIORITY_RANGE[1]:
            raise ConfigurationError(f"priority must fit in 32 bits, not {value}")
        return value
    if name == "task_id":
        return None if value is None else check_task_id(value)
    if name == "debounce":
        return check_seconds("debounce", value, allow_none=True)
    if name == "max_deliveries":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(f"max_deliveries must be an int >= 1, not {value!r}")
        return value
    if name == "concurrency_key":
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigurationError(f"concurrency_key must be a non-empty str, not {value!r}")
        return value
    if name == "concurrency_limit":
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ConfigurationError(f"concurrency_limit must be an int >= 1, not {value!r}")
        return value
    if name == "rate_limit":
        if value is not None:
            parse_rate(value)
        return value
    if name == "rate_key":
        return None if value is None else check_rate_key(value)
    raise AssertionError(name)  # pragma: no cover - names are checked by the caller


def _check_total_wait(policy: RetryPolicy) -> RetryPolicy:
    """``policy``, or ``ConfigurationError`` if its retries could make a task due after
    ``MAX_ETA``: the waits before all of its retries, added up, must fit before it."""
    total = _total_wait(policy)
    allowed = MAX_ETA_TIMESTAMP - time.time()
    if total > allowed:
        raise ConfigurationError(
            f"retry={policy!r} waits {total:g} seconds in all before its last retry, which would "
            f"make that retry due after {MAX_ETA_TEXT}, the latest ETA a task can "
            f"have: lower max_attempts or the backoff so that the waits add up to less than "
            f"{allowed:.0f} seconds"
        )
    return policy


def _total_wait(policy: RetryPolicy) -> float:
    """The seconds a task waits before all of the policy's retries together, without jitter
    (the longest it can be)."""
    retries = policy.max_attempts - 1
    backoff = policy.backoff
    if isinstance(backoff, FixedBackoff):
        return backoff.delay * retries
    initial, factor, cap = backoff.initial, backoff.factor, backoff.max_delay
    if initial == 0 or factor == 1 or initial >= cap:
        return min(initial, cap) * retries
    # The waits grow as initial * factor**k until they reach the cap: a geometric sum, then
    # the cap for every retry after that.
    growing = min(retries, math.ceil((math.log(cap) - math.log(initial)) / math.log(factor)))
    if growing == 0:
        return cap * retries
    # Through the last growing wait, which is below the cap, so nothing overflows on the way.
    last = min(math.exp(math.log(initial) + (growing - 1) * math.log(factor)), cap)
    grown = last * (factor / (factor - 1)) - initial / (factor - 1)
    return grown + cap * (retries - growing)


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """The run-time options a worker reads back from a claimed task."""

    timeout: float | None
    retry: RetryPolicy
    max_deliveries: int
    failure_ttl: float | None = DEFAULT_FAILURE_TTL
    """Seconds a failed task is kept (``None``: until requeued or purged)."""
    rate: RateLimit | None = None
    """The task's rate limit, or ``None``."""


def parse_engine_options(text: str) -> EngineOptions:
    """Read the JSON text made by ``TaskOptions.engine_options``; raise ``ValueError`` if bad.

    A trace context stored with the task is left out: it differs from task to task, and the
    options without it are the same for many (they are parsed once and remembered)."""
    known = _KNOWN.get(text)
    if known is not None:
        return known
    i = text.find(TRACE_MARK) if isinstance(text, str) else -1
    if i >= 0:
        return _parse_remembered(text[:i] + "}")
    options = _parse_remembered(text)
    if len(_KNOWN) < _KNOWN_MAX:
        _KNOWN[text] = options
    return options


_KNOWN: dict[str, EngineOptions] = {}
"""Options texts without a trace context, parsed: one dictionary lookup per task when its
options are one of these (most tasks share a few)."""
_KNOWN_MAX = 1024


@functools.lru_cache(maxsize=1024)
def _parse_remembered(text: str) -> EngineOptions:
    try:
        return _parse_engine_options(text)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"task options are malformed ({type(exc).__name__}: {exc})") from exc


def _parse_engine_options(text: str) -> EngineOptions:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("task options are not a JSON object")
    version = data.get("v")
    if type(version) is not int or version != 1:
        raise ValueError(
            f"task options have format version {version!r}; this worker reads version 1 "
            "(upgrade the worker to the version of sitq that enqueued the task)"
        )
    retry = data.get("retry")
    timeout = data.get("timeout")
    try:
        timeout = check_seconds("timeout", timeout, allow_none=True)
    except ConfigurationError as exc:
        raise ValueError(f"task options: {exc}") from None
    max_deliveries = data.get("max_deliveries", DEFAULT_MAX_DELIVERIES)
    if type(max_deliveries) is not int or max_deliveries < 1:
        raise ValueError(
            f"task options: max_deliveries must be an int >= 1, not {max_deliveries!r}"
        )
    failure_ttl = data.get("failure_ttl", DEFAULT_FAILURE_TTL)
    try:
        failure_ttl = check_seconds("failure_ttl", failure_ttl, allow_none=True)
    except ConfigurationError as exc:
        raise ValueError(f"task options: {exc}") from None
    return EngineOptions(
        timeout=None if timeout is None else float(timeout),
        retry=NO_RETRY if retry is None else RetryPolicy.from_dict(retry),
        max_deliveries=max_deliveries,
        failure_ttl=None if failure_ttl is None else float(failure_ttl),
        rate=_stored_rate(data),
    )


def _stored_rate(data: dict[str, Any]) -> RateLimit | None:
    """The rate limit stored in a task's options, or ``None`` if it has none."""
    text, key = data.get("rate_limit"), data.get("rate_key")
    if text is None and key is None:
        return None
    try:
        count, period = parse_rate(text)
        check_rate_key(key)
    except ConfigurationError as exc:
        raise ValueError(f"task options: {exc}") from None
    assert isinstance(text, str)
    assert isinstance(key, str)
    return RateLimit(key=key, count=count, period=period, text=text)
