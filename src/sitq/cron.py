"""Cron schedules: tick arithmetic, the stored definition, and the loop every worker runs.

No worker is special. Each one reads the schedules from the backend, and when a schedule's next
tick is due it enqueues the tick's task under an id derived from (schedule name, tick time), then
advances the schedule's ``last_tick`` with a compare-and-set. Several workers racing on one tick
enqueue the same id (the backend keeps the first) and only one of them advances the schedule, so
each tick runs once however many workers drive the schedules.

Times are evaluated on the wall clock of the schedule's time zone (default UTC): a wall time
that happens twice when clocks go back runs at its first occurrence only, and a wall time that
does not exist when clocks go forward runs as far after the change as it was after the start of
the gap (a 02:30 job runs at 03:30 on the day 02:00 jumps to 03:00). Either way it runs once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from sitq.errors import ConfigurationError, check_clock
from sitq.models import CronRecord, NewTask, to_datetime
from sitq.options import check_name

if TYPE_CHECKING:
    from sitq.backends.base import Backend

log = logging.getLogger("sitq.cron")

Misfire = Literal["once", "skip"]
MISFIRE_POLICIES: tuple[str, ...] = ("once", "skip")

MISFIRE_GRACE = 60.0
"""With ``misfire="skip"``, a tick found more than this many seconds late is skipped."""

REFRESH_INTERVAL = 1.0
"""Seconds between re-reads of the schedules, so a change takes effect without a restart."""

_TICK_NAMESPACE = uuid.UUID("5b0f3f4e-6a55-4c64-9f0e-1d9c2b7c1c11")
_DEFINITION_VERSION = 1


def check_cron_name(name: Any, what: str = "cron name") -> str:
    """A valid schedule or lock name: 1-255 printable characters without whitespace."""
    return check_name(name, f"{what} {name!r}")


@dataclass(frozen=True, slots=True)
class CronExpression:
    """A cron expression evaluated on the wall clock of a time zone.

    Five fields (minute hour day-of-month month day-of-week) or six with seconds first
    (second minute hour day-of-month month day-of-week); ``@hourly``-style aliases work too.
    """

    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        expr = self.expression
        if not isinstance(expr, str) or not expr.strip():
            raise ConfigurationError(f"cron expression must be a non-empty str, not {expr!r}")
        fields = expr.split()
        if not expr.startswith("@") and len(fields) not in (5, 6):
            raise ConfigurationError(
                f"cron expression {expr!r} has {len(fields)} fields: use 5 (minute hour day "
                "month weekday) or 6 with seconds first (second minute hour day month weekday)"
            )
        if any(f.upper().startswith("H") for f in fields if not expr.startswith("@")):
            raise ConfigurationError(
                f"cron expression {expr!r}: hashed 'H' fields are not supported"
            )
        if not croniter.is_valid(expr, second_at_beginning=self.has_seconds):
            raise ConfigurationError(f"cron expression {expr!r} is not valid")
        if not isinstance(self.timezone, str):
            raise ConfigurationError(
                f"timezone must be an IANA name like 'Europe/Paris', not {self.timezone!r}"
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(
                f"timezone {self.timezone!r} is not a known IANA time zone (like 'Europe/Paris'; "
                "install the tzdata package where the system has no zone database)"
            ) from exc

    @property
    def has_seconds(self) -> bool:
        """True for the six-field form."""
        return not self.expression.startswith("@") and len(self.expression.split()) == 6

    @property
    def _zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def _iter(self, start: datetime) -> croniter:
        return croniter(self.expression, start, second_at_beginning=self.has_seconds)

    def _instant(self, wall: datetime) -> float:
        # fold=0: the first of two repeated wall times; a wall time inside a gap maps forward
        # by the gap's length (PEP 495).
        return wall.replace(tzinfo=self._zone, fold=0).timestamp()

    def _wall(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, self._zone).replace(tzinfo=None, fold=0)

    def next_after(self, ts: float) -> float:
        """The first tick strictly after ``ts`` (POSIX seconds)."""
        it = self._iter(self._wall(math.floor(ts)))
        while True:
            tick = self._instant(it.get_next(datetime))
            if tick > ts:
                return tick

    def latest_at_or_before(self, ts: float) -> float | None:
        """The last tick at or before ``ts``, or ``None`` if there is none within about a year
        and a half (an expression like ``0 0 31 2 *`` never fires)."""
        floor = math.floor(ts)
        start = floor + 1
        here = datetime.fromtimestamp(start, self._zone)
        if here.fold:
            # The second pass of a repeated hour, which has no ticks of its own: the ticks of
            # its wall times are the first pass's instants, all before ``ts``. Start the walk
            # back from the end of the repeat, or they would be missed.
            first = here.replace(fold=0).utcoffset() or timedelta(0)
            second = here.utcoffset() or timedelta(0)
            start += int((first - second).total_seconds())
        it = self._iter(self._wall(start))
        limit = floor - 550 * 86400
        while True:
            try:
                tick = self._instant(it.get_prev(datetime))
            except Exception:  # croniter gives up on expressions that never match
                return None
            if tick <= ts:
                return tick
            if tick < limit:
                return None


def due_tick(
    expression: CronExpression, last_tick: float, now: float, misfire: str
) -> tuple[float, bool] | None:
    """What a schedule last advanced to ``last_tick`` should do at ``now``.

    ``None`` when no tick is due. Otherwise ``(tick, run)``: advance ``last_tick`` to ``tick``,
    and enqueue it if ``run``. Only the latest due tick counts: after an outage the ticks
    missed before it are dropped; with ``misfire="skip"`` the latest one too, unless it is less
    than :data:`MISFIRE_GRACE` seconds late.
    """
    latest = expression.latest_at_or_before(now)
    if latest is None or latest <= last_tick:
        return None
    run = misfire == "once" or now - latest <= MISFIRE_GRACE
    return latest, run


def tick_task_id(name: str, tick: float) -> str:
    """The id of the task a schedule enqueues for ``tick``: the same on every worker."""
    return "cron-" + uuid.uuid5(_TICK_NAMESPACE, f"{name}\n{int(tick)}").hex


@dataclass(frozen=True, slots=True)
class CronDefinition:
    """A schedule as the engine stores it: when it fires and the task each tick enqueues."""

    expression: CronExpression
    misfire: str
    func: str
    queue: str
    payload: bytes
    options: str
    priority: int
    result_ttl: float
    concurrency_key: str | None
    concurrency_limit: int | None

    def encode(self) -> bytes:
        """The bytes a backend stores."""
        return json.dumps(
            {
                "v": _DEFINITION_VERSION,
                "expression": self.expression.expression,
                "timezone": self.expression.timezone,
                "misfire": self.misfire,
                "func": self.func,
                "queue": self.queue,
                "payload": base64.b64encode(self.payload).decode(),
                "options": self.options,
                "priority": self.priority,
                "result_ttl": self.result_ttl,
                "concurrency_key": self.concurrency_key,
                "concurrency_limit": self.concurrency_limit,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> CronDefinition:
        """Read what :meth:`encode` wrote; ``ValueError`` if it cannot."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("v") != _DEFINITION_VERSION:
            raise ValueError("unknown cron definition format (written by a newer sitq?)")
        return cls(
            expression=CronExpression(raw["expression"], raw["timezone"]),
            misfire=raw["misfire"],
            func=raw["func"],
            queue=raw["queue"],
            payload=base64.b64decode(raw["payload"]),
            options=raw["options"],
            priority=int(raw["priority"]),
            result_ttl=float(raw["result_ttl"]),
            concurrency_key=raw["concurrency_key"],
            concurrency_limit=raw["concurrency_limit"],
        )

    def task(self, name: str, tick: float, now: float) -> NewTask:
        """The task for one tick."""
        return NewTask(
            id=tick_task_id(name, tick),
            queue=self.queue,
            payload=self.payload,
            options=self.options,
            priority=self.priority,
            eta=now,
            enqueued_at=now,
            result_ttl=self.result_ttl,
            concurrency_key=self.concurrency_key,
            concurrency_limit=self.concurrency_limit,
        )


@dataclass(frozen=True, slots=True)
class CronInfo:
    """A stored schedule, as :meth:`TaskQueue.list_crons` reports it."""

    name: str
    expression: str
    timezone: str
    misfire: str
    func: str
    """The function each tick calls, as ``module:qualname``."""
    queue: str
    last_tick: datetime | None
    """The last tick the schedule has passed (run or skipped)."""
    next_run: datetime | None
    """The next tick, or ``None`` if the expression never fires."""

    @classmethod
    def from_record(cls, record: CronRecord) -> CronInfo:
        """Read a backend's record."""
        d = CronDefinition.decode(record.definition)
        try:
            next_run: float | None = d.expression.next_after(record.last_tick)
        except Exception:
            next_run = None
        return cls(
            name=record.name,
            expression=d.expression.expression,
            timezone=d.expression.timezone,
            misfire=d.misfire,
            func=d.func,
            queue=d.queue,
            last_tick=to_datetime(record.last_tick),
            next_run=to_datetime(next_run) if next_run is not None else None,
        )


class CronDriver:
    """The loop a worker runs to drive every stored schedule (see the module docstring).

    ``clock`` is where it reads the time (POSIX seconds; ``time.time`` by default).
    """

    def __init__(
        self,
        backend: Backend,
        refresh: float = REFRESH_INTERVAL,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.backend = backend
        self.refresh = refresh
        self._clock = check_clock(clock)
        self.enqueued = 0
        """Tick tasks this driver stored (a tick another worker stored first is not counted)."""
        self.passes = 0
        """Completed passes over the schedules."""
        self._definitions: dict[bytes, CronDefinition | None] = {}

    def _definition(self, record: CronRecord) -> CronDefinition | None:
        if record.definition in self._definitions:
            return self._definitions[record.definition]
        try:
            definition: CronDefinition | None = CronDefinition.decode(record.definition)
        except Exception as exc:
            log.error("cron schedule %r cannot be read and is not driven: %s", record.name, exc)
            definition = None
        if len(self._definitions) > 1000:
            self._definitions.clear()
        self._definitions[record.definition] = definition
        return definition

    async def run_once(self, now: float | None = None) -> float:
        """Enqueue every due tick once; return the seconds until the next one is due (at most
        the refresh interval)."""
        wake = self.refresh
        for record in await self.backend.list_crons():
            definition = self._definition(record)
            if definition is None:
                continue
            at = self._clock() if now is None else now
            due = due_tick(definition.expression, record.last_tick, at, definition.misfire)
            if due is not None:
                tick, run = due
                if run:
                    # Enqueue first, then advance: a crash in between leaves the tick to the
                    # next worker, whose enqueue of the same id is a no-op.
                    stored = await self.backend.enqueue([definition.task(record.name, tick, at)])
                    if stored[0]:
                        self.enqueued += 1
                else:
                    log.warning(
                        "cron %r: skipping the tick of %s (misfire='skip')",
                        record.name,
                        to_datetime(tick),
                    )
                await self.backend.advance_cron(record.name, record.last_tick, tick)
                last = tick
            else:
                last = record.last_tick
            try:
                upcoming = definition.expression.next_after(max(last, at))
            except Exception:
                continue
            # A hair late rather than early, so the tick is due when the loop wakes.
            wake = min(wake, max(upcoming - self._clock() + 0.002, 0.0))
        self.passes += 1
        return wake

    async def run(self) -> None:
        """Drive the schedules until cancelled; a failure is logged and retried."""
        failures = 0
        while True:
            try:
                wait = await self.run_once()
                failures = 0
            except Exception as exc:
                failures += 1
                wait = min(self.refresh * 2**failures, 30.0)
                log.warning("driving cron schedules failed (%s); retrying in %.1f s", exc, wait)
            await asyncio.sleep(wait)
