"""Hostile task envelopes: the engine options JSON text stored beside each payload.

``parse_engine_options`` reads what a worker needs at run time (format version ``v``, timeout,
retry policy, max_deliveries). Whatever text a backend hands it — arbitrary, truncated, the
wrong JSON types, a newer format version, values no enqueue could have written (a NaN or
negative timeout, ``max_deliveries`` 0) — it returns options a worker can act on, or raises
``ValueError`` with a message; never another exception, never values that would upset the
worker's event loop. The worker-level consequence (such a task fails with ``cannot read task
options`` and the worker goes on, on every backend) is shown by
``tests/conformance/test_bad_input.py::test_unreadable_options_fail_the_task`` and, with the
records forged in the stores, by ``tests/hostile/test_stored_records.py``.
"""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitq import ExponentialBackoff, FixedBackoff, RetryPolicy
from sitq.options import EngineOptions, TaskOptions, parse_engine_options

SETTINGS = settings(max_examples=150, deadline=timedelta(seconds=2))

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = st.sampled_from(["v", "timeout", "retry", "max_deliveries", "extra"])


def _acceptable(options: EngineOptions) -> None:
    """What a worker can act on: no NaN, no infinity, nothing negative, the right types."""
    assert options.timeout is None or (
        isinstance(options.timeout, float) and math.isfinite(options.timeout)
    )
    assert options.timeout is None or options.timeout > 0
    assert isinstance(options.max_deliveries, int) and options.max_deliveries >= 1
    assert isinstance(options.retry, RetryPolicy)


def _parse(text: str) -> EngineOptions | None:
    try:
        options = parse_engine_options(text)
    except ValueError as exc:
        message = str(exc)
    else:
        _acceptable(options)
        return options
    assert message, "a ValueError must say what is wrong"
    return None


@SETTINGS
@given(text=st.text(max_size=300))
def test_arbitrary_text_gives_options_or_a_value_error(text: str) -> None:
    _parse(text)


@SETTINGS
@given(value=JSON_VALUES)
def test_any_json_value_gives_options_or_a_value_error(value: Any) -> None:
    _parse(json.dumps(value))


@SETTINGS
@given(fields=st.dictionaries(FIELDS, JSON_VALUES, max_size=5), version=JSON_VALUES)
def test_objects_with_wrong_types_give_options_or_a_value_error(
    fields: dict[str, Any], version: Any
) -> None:
    _parse(json.dumps({**fields, "v": 1}))
    text = json.dumps({**fields, "v": version})
    _parse(text)
    if type(version) is not int or version != 1:
        with pytest.raises(ValueError, match="format version"):
            parse_engine_options(text)


@SETTINGS
@given(cut=st.integers(0, 400))
def test_truncated_options_give_a_value_error(cut: int) -> None:
    text = TaskOptions(
        timeout=12.5,
        retry=RetryPolicy(max_attempts=4, backoff=ExponentialBackoff(initial=0.5)),
        max_deliveries=3,
    ).engine_options()
    cut %= len(text)
    with pytest.raises(ValueError, match=r"\w"):
        parse_engine_options(text[:cut])


@pytest.mark.parametrize("version", [2, 3, 99, 0, -1, "1", 1.5, None, [1], {"major": 2}])
def test_a_version_other_than_1_is_refused_naming_it(version: Any) -> None:
    text = json.dumps({"v": version, "timeout": None, "retry": None, "max_deliveries": 5})
    with pytest.raises(ValueError, match="format version") as caught:
        parse_engine_options(text)
    assert repr(version) in str(caught.value)
    assert "upgrade the worker" in str(caught.value)


@pytest.mark.parametrize(
    "fields",
    [
        {"timeout": "NaN"},
        {"timeout": "Infinity"},
        {"timeout": "-Infinity"},
        {"timeout": -1},
        {"timeout": 0},
        {"timeout": "30"},
        {"timeout": True},
        {"timeout": 1e400},
        {"max_deliveries": 0},
        {"max_deliveries": -3},
        {"max_deliveries": 2.5},
        {"max_deliveries": "5"},
        {"max_deliveries": None},
        {"max_deliveries": True},
        {"retry": {"max_attempts": 0, "backoff": {"kind": "fixed", "delay": 1}, "retry_on": []}},
        {"retry": {"max_attempts": 3, "backoff": {"kind": "fixed", "delay": -1}, "retry_on": []}},
        {"retry": {"max_attempts": 3, "backoff": {"kind": "warp"}, "retry_on": []}},
        {"retry": {"max_attempts": 3, "backoff": None, "retry_on": []}},
        {"retry": "always"},
        {"retry": [1, 2]},
    ],
    ids=lambda f: json.dumps(f)[:40],
)
def test_values_no_enqueue_could_write_are_refused(fields: dict[str, Any]) -> None:
    # json.dumps writes NaN and Infinity as bare tokens, which json.loads reads back as floats.
    base = {"v": 1, "timeout": None, "retry": None, "max_deliveries": 5}
    text = json.dumps({**base, **fields}).replace('"NaN"', "NaN").replace('"Infinity"', "Infinity")
    text = text.replace('"-Infinity"', "-Infinity")
    with pytest.raises(ValueError, match=r"\w"):
        parse_engine_options(text)


@SETTINGS
@given(
    timeout=st.none() | st.floats(0.001, 1e6),
    attempts=st.integers(1, 50),
    backoff=st.builds(FixedBackoff, st.floats(0, 1e4))
    | st.builds(ExponentialBackoff, st.floats(0, 100), st.floats(1, 10), st.floats(0, 1e4)),
    max_deliveries=st.integers(1, 1000),
)
def test_options_written_by_enqueue_read_back_unchanged(
    timeout: float | None, attempts: int, backoff: Any, max_deliveries: int
) -> None:
    retry = RetryPolicy(max_attempts=attempts, backoff=backoff, retry_on=(KeyError, OSError))
    text = TaskOptions(timeout=timeout, retry=retry, max_deliveries=max_deliveries).engine_options()
    assert json.loads(text)["v"] == 1
    options = parse_engine_options(text)
    assert options.timeout == timeout
    assert options.retry == retry
    assert options.max_deliveries == max_deliveries
