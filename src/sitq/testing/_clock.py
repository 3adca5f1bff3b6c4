"""``FakeClock``: a clock that stands still until a test moves it."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

from sitq.errors import ConfigurationError


def _timestamp(when: datetime, what: str) -> float:
    if not isinstance(when, datetime):
        raise ConfigurationError(f"{what} needs a datetime, not {when!r}")
    if when.tzinfo is None or when.utcoffset() is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def seconds_of(value: object, what: str) -> float:
    """``value`` (seconds or a timedelta) as finite seconds >= 0; ``ConfigurationError`` naming
    ``what`` for anything else."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    else:
        raise ConfigurationError(f"{what} needs seconds or a timedelta, not {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"{what} needs a finite number of seconds >= 0, not {value!r}")
    return seconds


class FakeClock:
    """A clock that stands still until it is moved, with :meth:`advance` or :meth:`advance_to`.

    Calling it returns the time as POSIX seconds, the way the engine reads a clock (it stands in
    for ``time.time``). It starts at ``start``: a datetime (naive means UTC) or POSIX seconds; by
    default the real time when it is made, so datetimes that code under test computes from the
    real clock still fall where they should. It never goes back.
    """

    def __init__(self, start: datetime | float | None = None) -> None:
        if start is None:
            self._now = time.time()
        elif isinstance(start, datetime):
            self._now = _timestamp(start, "FakeClock(start=...)")
        elif isinstance(start, int | float) and not isinstance(start, bool):
            self._now = float(start)
            if not math.isfinite(self._now):
                raise ConfigurationError(f"FakeClock(start=...) must be finite, not {start!r}")
        else:
            raise ConfigurationError(
                f"FakeClock(start=...) takes a datetime or POSIX seconds, not {start!r}"
            )

    def __call__(self) -> float:
        """The time, as POSIX seconds."""
        return self._now

    def time(self) -> float:
        """The time, as POSIX seconds (the same as calling the clock)."""
        return self._now

    @property
    def now(self) -> datetime:
        """The time, as an aware UTC datetime."""
        return datetime.fromtimestamp(self._now, UTC)

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move the clock forward by ``seconds`` (a number >= 0 or a timedelta); return the new
        time. Nothing runs meanwhile: the next ``drain`` runs what has come due."""
        self._now += seconds_of(seconds, "FakeClock.advance")
        return self.now

    def advance_to(self, when: datetime) -> datetime:
        """Move the clock forward to ``when`` (naive means UTC); return the new time.
        ``ConfigurationError`` if ``when`` is earlier than the clock: it never goes back."""
        target = _timestamp(when, "FakeClock.advance_to")
        if target < self._now:
            raise ConfigurationError(
                f"FakeClock.advance_to({when.isoformat(sep=' ')}) is earlier than the clock "
                f"({self.now.isoformat(sep=' ')}): the clock never goes back (make a new "
                "FakeClock(start=...) to start at an earlier time)"
            )
        self._now = target
        return self.now

    def _move_to(self, timestamp: float) -> None:
        """Move to ``timestamp`` if it is later (``drain(advance=...)`` steps the clock)."""
        self._now = max(self._now, timestamp)

    def __repr__(self) -> str:
        return f"FakeClock({self.now.isoformat(sep=' ')})"
