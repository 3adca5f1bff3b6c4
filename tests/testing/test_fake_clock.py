"""``FakeClock``: it stands still until moved, never goes back, and refuses bad input."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from sitq import ConfigurationError
from sitq.testing import FakeClock


def test_it_starts_at_the_real_time_and_stands_still() -> None:
    before = time.time()
    clock = FakeClock()
    after = time.time()
    assert before <= clock() <= after
    first = clock()
    assert clock() == clock.time() == first, "the clock moved on its own"
    assert clock.now == datetime.fromtimestamp(first, UTC)
    assert clock.now.tzinfo is UTC


def test_start_takes_a_datetime_or_seconds() -> None:
    assert FakeClock(datetime(2030, 1, 1, tzinfo=UTC)).now == datetime(2030, 1, 1, tzinfo=UTC)
    # A naive datetime means UTC, as in enqueue_at.
    assert FakeClock(datetime(2030, 1, 1)).now == datetime(2030, 1, 1, tzinfo=UTC)
    paris = timezone(timedelta(hours=1))
    assert FakeClock(datetime(2030, 1, 1, 1, tzinfo=paris)).now == datetime(2030, 1, 1, tzinfo=UTC)
    assert FakeClock(1_000_000).time() == 1_000_000.0


def test_advance_moves_it_forward_by_seconds_or_a_timedelta() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.advance(90) == datetime(2030, 1, 1, 0, 1, 30, tzinfo=UTC)
    assert clock.advance(timedelta(hours=1)) == datetime(2030, 1, 1, 1, 1, 30, tzinfo=UTC)
    assert clock.advance(0.5) == datetime(2030, 1, 1, 1, 1, 30, 500000, tzinfo=UTC)
    assert clock.now == datetime(2030, 1, 1, 1, 1, 30, 500000, tzinfo=UTC)


def test_advance_to_moves_it_to_a_datetime_but_never_back() -> None:
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    assert clock.advance_to(datetime(2030, 6, 1, 9)) == datetime(2030, 6, 1, 9, tzinfo=UTC)
    clock.advance_to(datetime(2030, 6, 1, 9))  # standing still is allowed
    with pytest.raises(ConfigurationError, match="never goes back"):
        clock.advance_to(datetime(2030, 6, 1, 8, 59))
    assert clock.now == datetime(2030, 6, 1, 9, tzinfo=UTC), "a refused move moved the clock"


@pytest.mark.parametrize(
    "bad", [-1, -0.001, math.inf, math.nan, "5", None, True, timedelta(seconds=-1)]
)
def test_advance_refuses_what_is_not_a_finite_delay(bad: object) -> None:
    clock = FakeClock(0)
    with pytest.raises(ConfigurationError, match=r"FakeClock\.advance"):
        clock.advance(bad)  # type: ignore[arg-type]
    assert clock() == 0.0


@pytest.mark.parametrize("bad", ["2030-01-01", 1_900_000_000, None])
def test_advance_to_refuses_what_is_not_a_datetime(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"advance_to needs a datetime"):
        FakeClock(0).advance_to(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["2030-01-01", math.inf, math.nan, True])
def test_start_refuses_what_is_not_a_time(bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"FakeClock\(start=\.\.\.\)"):
        FakeClock(bad)  # type: ignore[arg-type]
