"""The engine's side of operating sitq: failure retention, function names, progress checks,
cursors and option checks, without a backend."""

from __future__ import annotations

import functools
import json
import math

import pytest

from sitq import ConfigurationError, TaskQueue
from sitq._operate import PURGE_STATES, parse_statuses
from sitq._task import function_name
from sitq.context import MAX_PROGRESS_MESSAGE, TaskContext
from sitq.models import MAX_ETA_TIMESTAMP, Claim, TaskStatus
from sitq.options import DEFAULT_FAILURE_TTL, TaskOptions, parse_engine_options
from sitq.worker import _failure_ttl
from tests.conformance import tasks


def _claim(options: str) -> Claim:
    return Claim(
        task_id="t",
        queue="q",
        payload=b"",
        options=options,
        priority=0,
        fencing_token=1,
        attempts=1,
        retries=0,
        enqueued_at=0.0,
        started_at=0.0,
        result_ttl=60.0,
    )


@pytest.mark.parametrize(
    ("given", "kept"),
    [({}, DEFAULT_FAILURE_TTL), ({"failure_ttl": 5}, 5.0), ({"failure_ttl": None}, None)],
)
def test_failure_ttl_travels_with_the_task(given: dict[str, object], kept: float | None) -> None:
    text = TaskOptions().merge(**given).engine_options()
    assert parse_engine_options(text).failure_ttl == kept
    assert _failure_ttl(_claim(text)) == kept


def test_failure_ttl_of_tasks_stored_before_it_existed_is_the_default() -> None:
    old = json.dumps({"v": 1, "timeout": None, "retry": None, "max_deliveries": 5})
    assert _failure_ttl(_claim(old)) == DEFAULT_FAILURE_TTL
    assert _failure_ttl(_claim("not json")) == DEFAULT_FAILURE_TTL
    assert DEFAULT_FAILURE_TTL == 7 * 86_400 and MAX_ETA_TIMESTAMP > 2.5e11


@pytest.mark.parametrize("bad", [0, -1, math.inf, math.nan, "1", True])
def test_failure_ttl_is_checked(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="failure_ttl"):
        TaskOptions().merge(failure_ttl=bad)


class _Thing:
    def method(self) -> None: ...

    def __call__(self) -> None: ...


def test_function_names() -> None:
    assert function_name(tasks.add) == "tests.conformance.tasks.add"
    assert function_name(functools.partial(functools.partial(tasks.add, 1), 2)) == (
        "tests.conformance.tasks.add"
    )
    assert function_name(_Thing().method) == "tests.unit.test_operating_engine._Thing.method"
    assert function_name(_Thing()) == "tests.unit.test_operating_engine._Thing"
    assert function_name(lambda: None).endswith("test_function_names.<locals>.<lambda>")
    assert function_name(len) == "builtins.len"


def test_progress_is_checked_and_messages_are_cut() -> None:
    seen: list[tuple[float, str | None]] = []
    ctx = TaskContext("t", "q", 1, "f", "w", _report=lambda v, m: seen.append((v, m)))
    ctx.set_progress(1)
    ctx.set_progress(0.5, "x" * 5000)
    assert seen[0] == (1.0, None)
    assert seen[1][1] is not None and len(seen[1][1]) == MAX_PROGRESS_MESSAGE
    for bad in (-0.1, 1.1, math.nan, True, "0.5"):
        with pytest.raises(ConfigurationError, match="from 0 to 1"):
            ctx.set_progress(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="message"):
        ctx.set_progress(0.1, 5)  # type: ignore[arg-type]


def test_statuses_come_in_group_order() -> None:
    assert parse_statuses(["success", "running", TaskStatus.FAILED]) == [
        TaskStatus.RUNNING,
        TaskStatus.FAILED,
        TaskStatus.SUCCESS,
    ]
    assert parse_statuses(None)[0] is TaskStatus.RUNNING
    assert set(PURGE_STATES["finished"]) == {
        TaskStatus.SUCCESS,
        TaskStatus.FAILED,
        TaskStatus.CANCELLED,
    }


async def test_purge_and_requeue_many_check_their_arguments() -> None:
    async with TaskQueue("memory://") as queue:
        for status in ("running", "all", 3):
            with pytest.raises(ConfigurationError, match="never purged"):
                await queue.purge("q", status)  # type: ignore[arg-type]
        for name in ("", None, 5):
            with pytest.raises(ConfigurationError, match="queue"):
                await queue.purge(name)  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="only failed or cancelled"):
            await queue.requeue_many("pending")
