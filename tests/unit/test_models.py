"""Public result types: TaskStatus and Result.from_snapshot."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sitq.models import Result, TaskSnapshot, TaskStatus, to_datetime


@pytest.mark.parametrize(
    ("status", "final"),
    [
        (TaskStatus.PENDING, False),
        (TaskStatus.RUNNING, False),
        (TaskStatus.SUCCESS, True),
        (TaskStatus.FAILED, True),
        (TaskStatus.CANCELLED, True),
    ],
)
def test_task_status_is_final(status: TaskStatus, final: bool) -> None:
    assert status.is_final is final


def test_task_status_from_value() -> None:
    assert TaskStatus("cancelled") is TaskStatus.CANCELLED
    with pytest.raises(ValueError, match="'done'"):
        TaskStatus("done")


def snapshot(status: TaskStatus, **changes: object) -> TaskSnapshot:
    fields: dict[str, object] = {
        "task_id": "t1",
        "queue": "default",
        "status": status,
        "attempts": 2,
        "enqueued_at": 1_700_000_000.0,
        "eta": 1_700_000_000.0,
        "started_at": 1_700_000_001.5,
        "finished_at": 1_700_000_002.25,
        "value": b"\x80value",
        "error": None,
        "traceback": None,
    }
    fields.update(changes)
    return TaskSnapshot(**fields)  # type: ignore[arg-type]


def test_from_snapshot_turns_timestamps_into_aware_utc_datetimes() -> None:
    result = Result.from_snapshot(snapshot(TaskStatus.SUCCESS))
    assert result.enqueued_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert result.started_at == result.enqueued_at + timedelta(seconds=1.5)
    assert result.finished_at == result.enqueued_at + timedelta(seconds=2.25)
    for moment in (result.enqueued_at, result.started_at, result.finished_at):
        assert moment is not None
        assert moment.tzinfo is not None
        assert moment.utcoffset() == timedelta(0)


def test_from_snapshot_keeps_missing_times_as_none() -> None:
    result = Result.from_snapshot(snapshot(TaskStatus.CANCELLED, started_at=None, finished_at=None))
    assert result.started_at is None
    assert result.finished_at is None
    assert result.enqueued_at is not None


def test_from_snapshot_keeps_value_on_success() -> None:
    result = Result.from_snapshot(snapshot(TaskStatus.SUCCESS))
    assert result.value == b"\x80value"
    assert (result.task_id, result.status, result.attempts) == ("t1", TaskStatus.SUCCESS, 2)


@pytest.mark.parametrize(
    "status", [TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.PENDING, TaskStatus.RUNNING]
)
def test_from_snapshot_drops_value_unless_success(status: TaskStatus) -> None:
    result = Result.from_snapshot(snapshot(status, error="ValueError: boom", traceback="tb"))
    assert result.value is None
    assert result.status is status
    assert (result.error, result.traceback) == ("ValueError: boom", "tb")


def test_to_datetime() -> None:
    assert to_datetime(None) is None
    assert to_datetime(0.0) == datetime(1970, 1, 1, tzinfo=UTC)
