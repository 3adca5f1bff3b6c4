"""Cron arithmetic: fields, time zones, DST gaps and repeats, misfire policy, tick ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from sitq.cron import (
    MISFIRE_GRACE,
    CronDefinition,
    CronExpression,
    due_tick,
    tick_task_id,
)
from sitq.errors import ConfigurationError

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int, tz: ZoneInfo | None = None, fold: int = 0) -> float:
    return datetime(*args, tzinfo=tz or UTC, fold=fold).timestamp()  # type: ignore[misc]


def ticks(expr: CronExpression, start: float, end: float) -> list[float]:
    out = []
    t = expr.next_after(start)
    while t <= end:
        out.append(t)
        t = expr.next_after(t)
    return out


def local(t: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(t, tz)


def test_five_fields_fire_on_minutes() -> None:
    expr = CronExpression("*/15 * * * *")
    assert expr.next_after(ts(2026, 1, 1, 0, 0, 0)) == ts(2026, 1, 1, 0, 15)
    assert expr.next_after(ts(2026, 1, 1, 0, 14, 59)) == ts(2026, 1, 1, 0, 15)
    assert expr.latest_at_or_before(ts(2026, 1, 1, 0, 15)) == ts(2026, 1, 1, 0, 15)
    assert expr.latest_at_or_before(ts(2026, 1, 1, 0, 29, 59)) == ts(2026, 1, 1, 0, 15)


def test_six_fields_put_seconds_first() -> None:
    expr = CronExpression("*/10 * * * * *")
    assert expr.has_seconds
    assert expr.next_after(ts(2026, 1, 1, 0, 0, 0)) == ts(2026, 1, 1, 0, 0, 10)
    daily = CronExpression("30 0 9 * * *")  # 09:00:30 every day
    assert daily.next_after(ts(2026, 1, 1, 9, 0, 0)) == ts(2026, 1, 1, 9, 0, 30)


def test_aliases_work() -> None:
    assert CronExpression("@hourly").next_after(ts(2026, 1, 1, 0, 1)) == ts(2026, 1, 1, 1, 0)


def test_fractional_times_give_whole_second_ticks() -> None:
    expr = CronExpression("* * * * * *")
    assert expr.next_after(ts(2026, 1, 1) + 0.5) == ts(2026, 1, 1, 0, 0, 1)
    assert expr.latest_at_or_before(ts(2026, 1, 1) + 0.5) == ts(2026, 1, 1)


@pytest.mark.parametrize(
    ("expression", "timezone", "words"),
    [
        ("", "UTC", "non-empty"),
        ("* * * *", "UTC", "4 fields"),
        ("* * * * * * *", "UTC", "7 fields"),
        ("61 * * * *", "UTC", "not valid"),
        ("H * * * *", "UTC", "'H'"),
        ("* * * * *", "Mars/Olympus", "IANA"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(
    expression: str, timezone: str, words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words):
        CronExpression(expression, timezone)


def test_time_zone_shifts_wall_clock_ticks() -> None:
    expr = CronExpression("0 9 * * *", "Europe/Berlin")
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    assert expr.next_after(ts(2026, 1, 10)) == ts(2026, 1, 10, 8, 0)
    assert expr.next_after(ts(2026, 7, 10)) == ts(2026, 7, 10, 7, 0)


def test_daily_job_in_the_spring_gap_runs_once_that_day() -> None:
    # 2026-03-08 02:00 in New York jumps to 03:00; 02:30 does not exist that day.
    expr = CronExpression("30 2 * * *", "America/New_York")
    got = ticks(expr, ts(2026, 3, 6, tz=NY), ts(2026, 3, 10, tz=NY))
    days = [local(t, NY).date().day for t in got]
    assert days == [6, 7, 8, 9]
    on_the_day = local(got[2], NY)
    assert (on_the_day.hour, on_the_day.minute) == (3, 30)


def test_daily_job_in_the_repeated_hour_runs_once_that_day() -> None:
    # 2026-11-01 01:00-02:00 happens twice in New York (EDT, then EST).
    expr = CronExpression("30 1 * * *", "America/New_York")
    got = ticks(expr, ts(2026, 10, 30, tz=NY), ts(2026, 11, 3, tz=NY))
    assert [local(t, NY).date().day for t in got] == [30, 31, 1, 2]
    first_pass = ts(2026, 11, 1, 1, 30, tz=NY, fold=0)
    assert got[2] == first_pass
    assert local(got[2], NY).utcoffset() == timedelta(hours=-4)


def test_berlin_gap_and_repeat() -> None:
    spring = CronExpression("30 2 * * *", "Europe/Berlin")
    got = ticks(spring, ts(2026, 3, 28, tz=BERLIN), ts(2026, 3, 31, tz=BERLIN))
    assert [local(t, BERLIN).day for t in got] == [28, 29, 30]
    autumn = CronExpression("30 2 * * *", "Europe/Berlin")
    got = ticks(autumn, ts(2026, 10, 24, tz=BERLIN), ts(2026, 10, 27, tz=BERLIN))
    assert [local(t, BERLIN).day for t in got] == [24, 25, 26]


def test_frequent_ticks_stay_strictly_increasing_across_both_changes() -> None:
    expr = CronExpression("*/10 * * * *", "America/New_York")
    for start in (ts(2026, 3, 8, 0, tz=NY), ts(2026, 11, 1, 0, tz=NY)):
        got = ticks(expr, start, start + 5 * 3600)
        assert got == sorted(set(got))
        assert all(t % 600 == 0 for t in got)


@settings(max_examples=200, deadline=None)
@given(
    t=st.floats(min_value=1.7e9, max_value=1.9e9, allow_nan=False),
    expression=st.sampled_from(
        ["* * * * *", "*/7 * * * *", "30 2 * * *", "0 0 * * 1", "*/5 * * * * *", "15 1 1 * *"]
    ),
    timezone=st.sampled_from(["UTC", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe"]),
)
# The last second of the first pass through a repeated hour (01:59:59 EDT, 1 November 2026):
# the latest tick is 01:59 EDT, not 00:59.
@example(t=1793512799.0, expression="* * * * *", timezone="America/New_York")
@example(t=1793512799.5, expression="*/5 * * * * *", timezone="America/New_York")
def test_latest_and_next_bracket_any_time(t: float, expression: str, timezone: str) -> None:
    expr = CronExpression(expression, timezone)
    latest = expr.latest_at_or_before(t)
    upcoming = expr.next_after(t)
    assert latest is not None
    assert latest <= t < upcoming
    assert expr.next_after(latest) >= upcoming


def test_an_expression_that_never_fires_has_no_latest_tick() -> None:
    assert CronExpression("0 0 31 2 *").latest_at_or_before(ts(2026, 6, 1)) is None


def test_due_tick_runs_only_the_latest_missed_tick() -> None:
    expr = CronExpression("0 * * * *")
    last = ts(2026, 1, 1, 0, 0)
    assert due_tick(expr, last, ts(2026, 1, 1, 0, 59, 59), "once") is None
    assert due_tick(expr, last, ts(2026, 1, 1, 1, 0, 1), "once") == (ts(2026, 1, 1, 1), True)
    # Five hours down: one run, for the last tick missed.
    assert due_tick(expr, last, ts(2026, 1, 1, 5, 30), "once") == (ts(2026, 1, 1, 5), True)


def test_due_tick_skip_drops_late_ticks_but_not_punctual_ones() -> None:
    expr = CronExpression("0 * * * *")
    last = ts(2026, 1, 1, 0, 0)
    on_time = ts(2026, 1, 1, 1) + MISFIRE_GRACE / 2
    assert due_tick(expr, last, on_time, "skip") == (ts(2026, 1, 1, 1), True)
    late = ts(2026, 1, 1, 5, 30)
    assert due_tick(expr, last, late, "skip") == (ts(2026, 1, 1, 5), False)


def test_tick_ids_are_the_same_everywhere_and_distinct_per_tick_and_name() -> None:
    a = tick_task_id("report", ts(2026, 1, 1))
    assert a == tick_task_id("report", ts(2026, 1, 1))
    assert a != tick_task_id("report", ts(2026, 1, 1, 0, 0, 1))
    assert a != tick_task_id("other", ts(2026, 1, 1))
    assert len(a) < 64


def test_definition_round_trips() -> None:
    d = CronDefinition(
        expression=CronExpression("*/5 * * * * *", "Europe/Berlin"),
        misfire="skip",
        func="mod:fn",
        queue="reports",
        payload=b"\x00\x01pickle",
        options="{}",
        priority=3,
        result_ttl=60.0,
        concurrency_key="k",
        concurrency_limit=2,
    )
    assert CronDefinition.decode(d.encode()) == d
    task = d.task("name", ts(2026, 1, 1), ts(2026, 1, 1) + 0.2)
    assert task.id == tick_task_id("name", ts(2026, 1, 1))
    assert (task.queue, task.priority, task.concurrency_limit) == ("reports", 3, 2)
    with pytest.raises(ValueError, match="format"):
        CronDefinition.decode(b'{"v": 99}')
