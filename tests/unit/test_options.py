"""Task options: each option checked where it is given, and the engine's JSON form."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import pytest

from sitq.errors import ConfigurationError
from sitq.models import MAX_ETA_TIMESTAMP
from sitq.options import (
    DEFAULT_FAILURE_TTL,
    DEFAULT_MAX_DELIVERIES,
    OPTION_NAMES,
    EngineOptions,
    TaskOptions,
    check_queue_name,
    check_task_id,
    parse_engine_options,
)
from sitq.retry import NO_RETRY, ExponentialBackoff, FixedBackoff, RetryPolicy

# -- merge ---------------------------------------------------------------------------------


def test_merge_returns_new_options_and_leaves_original_alone() -> None:
    base = TaskOptions()
    merged = base.merge(queue="emails", priority=5, timeout=3)
    assert (merged.queue, merged.priority, merged.timeout) == ("emails", 5, 3.0)
    assert isinstance(merged.timeout, float)
    assert base == TaskOptions()


def test_merge_with_nothing_is_equal() -> None:
    options = TaskOptions(queue="q", priority=3)
    assert options.merge() == options


def test_merge_retry_none_means_no_retry() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert TaskOptions().merge(retry=policy).retry is policy
    assert TaskOptions().merge(retry=policy).merge(retry=None).retry is NO_RETRY


def test_merge_accepts_boundary_values() -> None:
    options = TaskOptions().merge(
        queue="a" * 100,
        priority=2**31 - 1,
        task_id="x" * 255,
        result_ttl=0.001,
        max_deliveries=1,
        concurrency_key="k",
        concurrency_limit=1,
        timeout=None,
    )
    assert options.priority == 2**31 - 1
    assert TaskOptions().merge(priority=-(2**31)).priority == -(2**31)
    assert TaskOptions().merge(queue="A-z_0-9").queue == "A-z_0-9"


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("queue", ""),
        ("queue", "has space"),
        ("queue", "dots.not.allowed"),
        ("queue", "q" * 101),
        ("queue", "ünïcode"),
        ("queue", None),
        ("queue", 5),
        ("retry", "3 times"),
        ("retry", 3),
        ("retry", FixedBackoff(1)),
        ("timeout", 0),
        ("timeout", -1),
        ("timeout", math.nan),
        ("timeout", math.inf),
        ("timeout", True),
        ("timeout", "5"),
        ("result_ttl", None),
        ("result_ttl", 0),
        ("result_ttl", -5.0),
        ("result_ttl", math.inf),
        ("priority", 1.5),
        ("priority", True),
        ("priority", "1"),
        ("priority", None),
        ("priority", 2**31),
        ("priority", -(2**31) - 1),
        ("task_id", ""),
        ("task_id", "has space"),
        ("task_id", "tab\there"),
        ("task_id", "nul\x00"),
        ("task_id", "x" * 256),
        ("task_id", 123),
        ("max_deliveries", 0),
        ("max_deliveries", -1),
        ("max_deliveries", True),
        ("max_deliveries", 2.0),
        ("max_deliveries", None),
        ("concurrency_key", ""),
        ("concurrency_key", 5),
        ("concurrency_limit", 0),
        ("concurrency_limit", True),
        ("concurrency_limit", 1.5),
    ],
)
def test_merge_rejects_bad_values_naming_the_option(name: str, bad: Any) -> None:
    changes: dict[str, Any] = {name: bad}
    # Give the partner of a concurrency option so only the bad value can be blamed.
    if name == "concurrency_key":
        changes["concurrency_limit"] = 2
    if name == "concurrency_limit":
        changes["concurrency_key"] = "k"
    with pytest.raises(ConfigurationError) as info:
        TaskOptions().merge(**changes)
    assert name in str(info.value)


def test_merge_lists_unknown_options_and_valid_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        TaskOptions().merge(queue="ok", retries=3, delay=1)
    message = str(info.value)
    assert "['delay', 'retries']" in message
    assert str(sorted(OPTION_NAMES)) in message


def test_merge_unknown_option_is_rejected_before_values_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="unknown task option"):
        TaskOptions().merge(queue="bad name", bogus=1)


def test_concurrency_key_without_limit_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="concurrency_key and concurrency_limit"):
        TaskOptions().merge(concurrency_key="user-1")


def test_concurrency_limit_without_key_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="concurrency_key and concurrency_limit"):
        TaskOptions().merge(concurrency_limit=2)


def test_concurrency_pair_can_be_set_and_cleared_together() -> None:
    options = TaskOptions().merge(concurrency_key="user-1", concurrency_limit=2)
    assert (options.concurrency_key, options.concurrency_limit) == ("user-1", 2)
    cleared = options.merge(concurrency_key=None, concurrency_limit=None)
    assert (cleared.concurrency_key, cleared.concurrency_limit) == (None, None)
    with pytest.raises(ConfigurationError, match="go together"):
        options.merge(concurrency_limit=None)


def test_concurrency_limit_can_change_alone_when_key_is_set() -> None:
    options = TaskOptions().merge(concurrency_key="k", concurrency_limit=2)
    assert options.merge(concurrency_limit=5).concurrency_limit == 5


# -- queue names and task ids --------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "a", "Q_1-x", "9" * 100])
def test_check_queue_name_accepts_valid_names(name: str) -> None:
    assert check_queue_name(name) == name


@pytest.mark.parametrize("name", ["", " ", "a/b", "a:b", "é", "x" * 101, b"default", None])
def test_check_queue_name_rejects_invalid_names(name: Any) -> None:
    with pytest.raises(ConfigurationError, match="not a valid queue name"):
        check_queue_name(name)


def test_check_queue_name_names_the_argument() -> None:
    with pytest.raises(ConfigurationError, match=r"^queues='a b'"):
        check_queue_name("a b", "queues")


@pytest.mark.parametrize("task_id", ["a", "order-42", "ünïcode-ok", "x" * 255, "a:b/c?d"])
def test_check_task_id_accepts_valid_ids(task_id: str) -> None:
    assert check_task_id(task_id) == task_id


@pytest.mark.parametrize(
    "task_id", ["", "a b", "a\nb", "trailing\n", "\u00a0nbsp", "bell\x07", "x" * 256, 1, None]
)
def test_check_task_id_rejects_invalid_ids(task_id: Any) -> None:
    with pytest.raises(ConfigurationError, match="task_id="):
        check_task_id(task_id)


# -- engine options ------------------------------------------------------------------------


def test_engine_options_default_round_trip() -> None:
    text = TaskOptions().engine_options()
    assert json.loads(text) == {
        "v": 1,
        "timeout": None,
        "retry": None,
        "max_deliveries": DEFAULT_MAX_DELIVERIES,
        "failure_ttl": DEFAULT_FAILURE_TTL,
    }
    parsed = parse_engine_options(text)
    assert parsed == EngineOptions(
        timeout=None, retry=NO_RETRY, max_deliveries=DEFAULT_MAX_DELIVERIES
    )
    assert parsed.retry is NO_RETRY


def test_engine_options_round_trip_with_retry_and_timeout() -> None:
    policy = RetryPolicy(
        max_attempts=4,
        backoff=ExponentialBackoff(initial=0.5, factor=3, max_delay=20, jitter=False),
        retry_on=("builtins:KeyError", "app.errors:Flaky"),
    )
    options = TaskOptions().merge(timeout=2.5, retry=policy, max_deliveries=7)
    parsed = parse_engine_options(options.engine_options())
    assert parsed == EngineOptions(timeout=2.5, retry=policy, max_deliveries=7)


def test_engine_options_leave_out_what_the_engine_does_not_need() -> None:
    options = TaskOptions().merge(queue="q", priority=9, task_id="t1", result_ttl=60)
    assert set(json.loads(options.engine_options())) == {
        "v",
        "timeout",
        "retry",
        "max_deliveries",
        "failure_ttl",
    }


def test_parse_engine_options_defaults_missing_fields() -> None:
    parsed = parse_engine_options('{"v": 1}')
    assert parsed == EngineOptions(
        timeout=None, retry=NO_RETRY, max_deliveries=DEFAULT_MAX_DELIVERIES
    )


@pytest.mark.parametrize("text", ["", "not json", "{", "{'v': 1}"])
def test_parse_engine_options_rejects_bad_json(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - json's own error, any message
        parse_engine_options(text)


@pytest.mark.parametrize("text", ["[]", "[1]", '"v"', "1", "null"])
def test_parse_engine_options_rejects_non_objects(text: str) -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        parse_engine_options(text)


@pytest.mark.parametrize(
    ("text", "shown"), [('{"v": 2}', "2"), ("{}", "None"), ('{"v": "1"}', "'1'")]
)
def test_parse_engine_options_rejects_other_versions_naming_both(text: str, shown: str) -> None:
    with pytest.raises(ValueError, match="version") as info:
        parse_engine_options(text)
    message = str(info.value)
    assert f"format version {shown}" in message
    assert "reads version 1" in message


# -- edge cases that once slipped through ------------------------------------------------


def test_check_queue_name_rejects_trailing_newline() -> None:
    with pytest.raises(ConfigurationError):
        check_queue_name("default\n")


def test_merge_timeout_int_too_large_for_float_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="timeout"):
        TaskOptions().merge(timeout=10**400)


def test_concurrency_options_reach_the_stored_task() -> None:
    from sitq import TaskQueue

    queue = TaskQueue("memory://", concurrency_key="tenant-7", concurrency_limit=2)
    assert queue.task_options.concurrency_key == "tenant-7"
    view = queue.options(concurrency_key="tenant-8", concurrency_limit=1)
    assert (view.task_options.concurrency_key, view.task_options.concurrency_limit) == (
        "tenant-8",
        1,
    )


# -- retry policies and the latest ETA ----------------------------------------------------

_UNTIL_MAX_ETA = MAX_ETA_TIMESTAMP - time.time()


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(max_attempts=10**6),  # 300 s a retry: about 9 years in all
        RetryPolicy(max_attempts=2, backoff=FixedBackoff(_UNTIL_MAX_ETA * 0.9)),
        RetryPolicy(max_attempts=3, backoff=ExponentialBackoff(initial=1, max_delay=1e300)),
        RetryPolicy(max_attempts=10**9, backoff=ExponentialBackoff(initial=0, max_delay=1e300)),
    ],
)
def test_retry_policies_whose_waits_fit_before_the_latest_eta_are_accepted(
    policy: RetryPolicy,
) -> None:
    assert TaskOptions().merge(retry=policy).retry is policy


@pytest.mark.parametrize(
    "policy",
    [
        # Each wait fits; together they end after the latest ETA.
        RetryPolicy(max_attempts=3, backoff=FixedBackoff(_UNTIL_MAX_ETA * 0.6)),
        RetryPolicy(max_attempts=10**9, backoff=FixedBackoff(300)),
        RetryPolicy(max_attempts=200, backoff=ExponentialBackoff(initial=1, max_delay=1e300)),
        RetryPolicy(
            max_attempts=10**9,
            backoff=ExponentialBackoff(initial=1, factor=1.0000001, max_delay=1e300),
        ),
        RetryPolicy(max_attempts=2, backoff=FixedBackoff(1e300)),
    ],
)
def test_retry_policies_that_end_after_the_latest_eta_are_refused(policy: RetryPolicy) -> None:
    with pytest.raises(ConfigurationError, match=r"9999-12-31 23:59:59\.999999 UTC") as info:
        TaskOptions().merge(retry=policy)
    assert "retry=RetryPolicy(" in str(info.value)
    assert "lower max_attempts or the backoff" in str(info.value)


# -- rate limits ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [("20/s", 20, 1.0), ("100/m", 100, 60.0), ("5/h", 5, 3600.0), ("1000/s", 1000, 1.0)],
)
def test_rate_limit_is_stored_in_the_engine_options(text: str, count: int, period: float) -> None:
    options = TaskOptions().merge(rate_limit=text, rate_key="api.example.com")
    stored = json.loads(options.engine_options())
    assert (stored["rate_limit"], stored["rate_key"]) == (text, "api.example.com")
    rate = parse_engine_options(options.engine_options()).rate
    assert rate is not None
    assert (rate.key, rate.count, rate.period, rate.text) == (
        "api.example.com",
        count,
        period,
        text,
    )
    assert len(rate.slot_names) == count == len(set(rate.slot_names))


def test_options_without_a_rate_limit_are_written_as_before() -> None:
    assert "rate" not in TaskOptions().engine_options()
    assert parse_engine_options(TaskOptions().engine_options()).rate is None


def test_rate_limit_survives_a_trace_context() -> None:
    options = TaskOptions().merge(rate_limit="20/s", rate_key="k")
    rate = parse_engine_options(options.engine_options('{"traceparent":"x"}')).rate
    assert rate is not None and rate.key == "k"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rate_limit": "20/x", "rate_key": "k"}, r"rate_limit='20/x' is not a rate.*s, m, h"),
        ({"rate_limit": "0/s", "rate_key": "k"}, r"rate_limit='0/s': the count must be 1 to"),
        ({"rate_limit": "1001/s", "rate_key": "k"}, r"1001/s.*shorter period"),
        ({"rate_limit": "20 / s", "rate_key": "k"}, "is not a rate"),
        ({"rate_limit": 20, "rate_key": "k"}, r"rate_limit must be a str such as '20/s'.*not 20"),
        ({"rate_limit": "20/s"}, r"rate_limit='20/s' needs rate_key"),
        ({"rate_key": "api"}, r"rate_key='api' needs rate_limit"),
        ({"rate_limit": "20/s", "rate_key": ""}, "rate_key='' is not valid"),
        ({"rate_limit": "20/s", "rate_key": "a b"}, "without spaces"),
        ({"rate_limit": "20/s", "rate_key": 7}, "rate_key=7 is not valid"),
        ({"rate_limit": "20/s", "rate_key": "k" * 201}, "1-200 printable"),
    ],
)
def test_bad_rate_limits_are_refused_naming_the_problem(
    changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        TaskOptions().merge(**changes)


def test_rate_pair_can_be_cleared_together() -> None:
    options = TaskOptions().merge(rate_limit="5/h", rate_key="k")
    cleared = options.merge(rate_limit=None, rate_key=None)
    assert (cleared.rate_limit, cleared.rate_key) == (None, None)


@pytest.mark.parametrize(
    "stored",
    [
        '{"v":1,"timeout":null,"retry":null,"max_deliveries":5,"rate_limit":"9/x","rate_key":"k"}',
        '{"v":1,"timeout":null,"retry":null,"max_deliveries":5,"rate_limit":"9/s"}',
    ],
)
def test_a_damaged_stored_rate_limit_is_unreadable(stored: str) -> None:
    with pytest.raises(ValueError, match="task options: rate_"):
        parse_engine_options(stored)
