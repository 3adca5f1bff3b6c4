"""Retry policies: backoff delays, validation, decisions and their plain-data form."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from sitq._task import exception_names, failure
from sitq.errors import ConfigurationError, Retry
from sitq.retry import (
    NO_RETRY,
    ExponentialBackoff,
    FixedBackoff,
    RetryPolicy,
    backoff_from_dict,
)


class AppError(ValueError):
    """A subclass of a builtin, to check matching through the MRO."""


class OtherError(Exception):
    pass


def names(exc_type: type[BaseException]) -> tuple[str, ...]:
    return exception_names(exc_type)


# -- FixedBackoff --------------------------------------------------------------------------


def test_fixed_backoff_is_the_same_for_every_retry() -> None:
    backoff = FixedBackoff(2.5)
    assert [backoff.delay_for(n) for n in (1, 2, 10, 10**9)] == [2.5] * 4


def test_fixed_backoff_accepts_zero_and_int_as_float() -> None:
    assert FixedBackoff(0).delay == 0.0
    assert FixedBackoff(3).delay == 3.0
    assert isinstance(FixedBackoff(3).delay, float)


# -- ExponentialBackoff --------------------------------------------------------------------


def test_exponential_backoff_grows_by_factor_without_jitter() -> None:
    backoff = ExponentialBackoff(initial=0.5, factor=3, max_delay=1000, jitter=False)
    assert [backoff.delay_for(n) for n in (1, 2, 3, 4)] == [0.5, 1.5, 4.5, 13.5]


def test_exponential_backoff_caps_at_max_delay() -> None:
    backoff = ExponentialBackoff(initial=1, factor=2, max_delay=10, jitter=False)
    assert [backoff.delay_for(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]


def test_exponential_backoff_initial_above_max_delay_is_capped() -> None:
    assert ExponentialBackoff(initial=50, max_delay=5, jitter=False).delay_for(1) == 5


def test_exponential_backoff_retry_number_below_one_uses_initial() -> None:
    backoff = ExponentialBackoff(initial=2, factor=2, jitter=False)
    assert backoff.delay_for(0) == 2
    assert backoff.delay_for(-5) == 2


@pytest.mark.parametrize("retry_number", [1100, 10**6, 10**30, 10**400])
def test_exponential_backoff_huge_retry_number_does_not_overflow(retry_number: int) -> None:
    backoff = ExponentialBackoff(initial=1, factor=2, max_delay=60, jitter=False)
    assert backoff.delay_for(retry_number) == 60


def test_exponential_backoff_huge_retry_number_with_jitter_stays_in_cap() -> None:
    backoff = ExponentialBackoff(initial=1, factor=10, max_delay=60, jitter=True)
    delay = backoff.delay_for(10**6)
    assert 0 <= delay <= 60


def test_exponential_backoff_jitter_stays_within_zero_and_cap() -> None:
    backoff = ExponentialBackoff(initial=1, factor=2, max_delay=8, jitter=True)
    for n in (1, 2, 3, 4, 5, 50):
        cap = min(2 ** (n - 1), 8)
        delays = [backoff.delay_for(n) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays), (n, max(delays))
    # Full jitter actually varies the delay.
    assert len({backoff.delay_for(4) for _ in range(50)}) > 1


def test_exponential_backoff_jitter_draws_uniformly_from_zero_to_capped_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[float, float]] = []

    def fake_uniform(a: float, b: float) -> float:
        calls.append((a, b))
        return b

    monkeypatch.setattr(random, "uniform", fake_uniform)
    backoff = ExponentialBackoff(initial=1, factor=2, max_delay=5, jitter=True)
    assert backoff.delay_for(3) == 4
    assert backoff.delay_for(10) == 5
    assert calls == [(0, 4), (0, 5)]


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, -0.001, math.nan, math.inf, -math.inf, True, "1", None])
def test_fixed_backoff_rejects_bad_delay_naming_the_field(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"FixedBackoff\.delay"):
        FixedBackoff(bad)


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("initial", -1),
        ("initial", math.nan),
        ("initial", math.inf),
        ("initial", False),
        ("max_delay", -0.5),
        ("max_delay", math.nan),
        ("max_delay", math.inf),
        ("max_delay", "300"),
        ("factor", -2),
        ("factor", math.nan),
        ("factor", math.inf),
        ("factor", True),
        ("factor", 0.5),
        ("factor", 0),
    ],
)
def test_exponential_backoff_rejects_bad_values_naming_the_field(field: str, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"ExponentialBackoff\.{field}"):
        ExponentialBackoff(**{field: bad})


def test_exponential_backoff_factor_one_is_constant() -> None:
    backoff = ExponentialBackoff(initial=3, factor=1, jitter=False)
    assert [backoff.delay_for(n) for n in (1, 2, 100)] == [3, 3, 3]


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="FixedBackoff"):
        FixedBackoff(-1)


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.0, "3", None])
def test_retry_policy_rejects_bad_max_attempts(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\.max_attempts"):
        RetryPolicy(max_attempts=bad)


@pytest.mark.parametrize("bad", [None, "exponential", {"kind": "fixed", "delay": 1}, 5])
def test_retry_policy_rejects_bad_backoff(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\.backoff"):
        RetryPolicy(backoff=bad)


@pytest.mark.parametrize(
    "bad_item",
    ["ValueError", 42, None, int, object, ValueError(), "builtins.ValueError"],
)
def test_retry_policy_rejects_bad_retry_on_items(bad_item: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"RetryPolicy\.retry_on"):
        RetryPolicy(retry_on=(ValueError, bad_item))


def test_retry_policy_accepts_a_single_class_for_retry_on() -> None:
    policy = RetryPolicy(retry_on=ValueError)  # type: ignore[arg-type]
    assert policy.retry_on_names == ("builtins:ValueError",)


def test_retry_policy_normalizes_classes_to_names() -> None:
    policy = RetryPolicy(retry_on=(ValueError, AppError))
    assert policy.retry_on_names == ("builtins:ValueError", f"{__name__}:AppError")
    assert policy == RetryPolicy(retry_on=("builtins:ValueError", f"{__name__}:AppError"))


def test_no_retry_is_one_attempt() -> None:
    assert NO_RETRY.max_attempts == 1
    assert NO_RETRY.decide(1, names(ValueError), None, False) is None
    assert NO_RETRY.decide(1, names(Retry), 1.0, True) is None


# -- decide --------------------------------------------------------------------------------


def fixed_policy(**kwargs: Any) -> RetryPolicy:
    return RetryPolicy(max_attempts=3, backoff=FixedBackoff(2.0), **kwargs)


def test_decide_retries_within_max_attempts() -> None:
    policy = fixed_policy()
    assert policy.decide(1, names(ValueError), None, False) == 2.0
    assert policy.decide(2, names(ValueError), None, False) == 2.0


def test_decide_gives_up_at_and_over_max_attempts() -> None:
    policy = fixed_policy()
    assert policy.decide(3, names(ValueError), None, False) is None
    assert policy.decide(4, names(ValueError), None, False) is None


def test_decide_passes_failure_count_as_retry_number_to_backoff() -> None:
    policy = RetryPolicy(
        max_attempts=5, backoff=ExponentialBackoff(initial=1, factor=3, jitter=False)
    )
    assert [policy.decide(n, names(OSError), None, False) for n in (1, 2, 3, 4, 5)] == [
        1,
        3,
        9,
        27,
        None,
    ]


def test_decide_matches_subclasses_through_mro_names() -> None:
    policy = fixed_policy(retry_on=(ValueError,))
    assert policy.decide(1, names(AppError), None, False) == 2.0
    assert policy.decide(1, names(UnicodeDecodeError), None, False) == 2.0


def test_decide_does_not_retry_unlisted_classes() -> None:
    policy = fixed_policy(retry_on=(ValueError,))
    assert policy.decide(1, names(KeyError), None, False) is None
    assert policy.decide(1, names(OtherError), None, False) is None


def test_decide_does_not_match_a_base_class_against_a_subclass_entry() -> None:
    policy = fixed_policy(retry_on=(AppError,))
    assert policy.decide(1, names(ValueError), None, False) is None
    assert policy.decide(1, names(AppError), None, False) == 2.0


def test_decide_default_retry_on_exception_includes_timeouts_but_not_base_exceptions() -> None:
    policy = fixed_policy()
    assert policy.decide(1, names(TimeoutError), None, False) == 2.0
    assert policy.decide(1, names(KeyboardInterrupt), None, False) is None


def test_decide_matches_retry_on_given_as_strings() -> None:
    policy = fixed_policy(retry_on=(f"{__name__}:AppError",))
    assert policy.decide(1, names(AppError), None, False) == 2.0
    assert policy.decide(1, names(ValueError), None, False) is None


def test_decide_empty_retry_on_retries_nothing_but_explicit_requests() -> None:
    policy = fixed_policy(retry_on=())
    assert policy.decide(1, names(ValueError), None, False) is None
    assert policy.decide(1, names(Retry), None, True) == 2.0


def test_decide_explicit_retry_with_delay_ignores_retry_on_and_backoff() -> None:
    policy = fixed_policy(retry_on=(KeyError,))
    assert policy.decide(1, names(Retry), 7.5, True) == 7.5


def test_decide_explicit_retry_with_zero_delay_is_zero_not_backoff() -> None:
    assert fixed_policy().decide(1, names(Retry), 0.0, True) == 0.0


def test_decide_explicit_retry_without_delay_uses_backoff() -> None:
    policy = fixed_policy(retry_on=(KeyError,))
    assert policy.decide(2, names(Retry), None, True) == 2.0


def test_decide_explicit_retry_still_counts_against_max_attempts() -> None:
    assert fixed_policy().decide(3, names(Retry), 1.0, True) is None


def test_retry_raised_by_a_task_is_decided_with_its_delay() -> None:
    outcome = failure(Retry(delay=4))
    assert outcome.retry_requested
    policy = fixed_policy(retry_on=(KeyError,))
    decided = policy.decide(1, outcome.exc_types, outcome.retry_delay, outcome.retry_requested)
    assert decided == 4


def test_retry_rejects_negative_delay() -> None:
    with pytest.raises(ConfigurationError, match="delay"):
        Retry(delay=-1)


# -- to_dict / from_dict -------------------------------------------------------------------


def roundtrip(policy: RetryPolicy) -> RetryPolicy:
    return RetryPolicy.from_dict(json.loads(json.dumps(policy.to_dict())))


def test_policy_round_trips_with_classes() -> None:
    policy = RetryPolicy(
        max_attempts=4,
        backoff=ExponentialBackoff(initial=0.5, factor=3, max_delay=60, jitter=False),
        retry_on=(ValueError, AppError),
    )
    back = roundtrip(policy)
    assert back == policy
    assert back.retry_on_names == ("builtins:ValueError", f"{__name__}:AppError")


def test_policy_round_trips_with_string_names() -> None:
    policy = RetryPolicy(
        max_attempts=2,
        backoff=FixedBackoff(1.5),
        retry_on=("some.module:Outer.InnerError", "builtins:OSError"),
    )
    assert roundtrip(policy) == policy
    assert roundtrip(policy).retry_on_names == (
        "some.module:Outer.InnerError",
        "builtins:OSError",
    )


def test_policy_to_dict_is_plain_data() -> None:
    policy = RetryPolicy(max_attempts=2, backoff=FixedBackoff(3), retry_on=(KeyError,))
    assert policy.to_dict() == {
        "max_attempts": 2,
        "backoff": {"kind": "fixed", "delay": 3.0},
        "retry_on": ["builtins:KeyError"],
    }


def test_round_tripped_policy_decides_the_same() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=FixedBackoff(1), retry_on=(AppError,))
    back = roundtrip(policy)
    for exc in (AppError, ValueError):
        assert back.decide(1, names(exc), None, False) == policy.decide(1, names(exc), None, False)


@pytest.mark.parametrize(
    "backoff",
    [
        FixedBackoff(0),
        FixedBackoff(2.5),
        ExponentialBackoff(),
        ExponentialBackoff(initial=0.1, factor=1.5, max_delay=9, jitter=False),
    ],
)
def test_backoff_round_trips(backoff: FixedBackoff | ExponentialBackoff) -> None:
    assert backoff_from_dict(json.loads(json.dumps(backoff.to_dict()))) == backoff


@pytest.mark.parametrize("data", [{}, {"kind": "linear"}, {"kind": None}])
def test_backoff_from_dict_rejects_unknown_kind(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="backoff kind"):
        backoff_from_dict(data)


def test_from_dict_validates_like_the_constructor() -> None:
    data = RetryPolicy().to_dict()
    data["max_attempts"] = 0
    with pytest.raises(ConfigurationError, match="max_attempts"):
        RetryPolicy.from_dict(data)


# -- edge cases that once slipped through ------------------------------------------------


def test_fixed_backoff_rejects_int_too_large_for_float_with_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"FixedBackoff\.delay"):
        FixedBackoff(10**400)


def test_exponential_backoff_zero_initial_stays_zero_for_large_retry_numbers() -> None:
    backoff = ExponentialBackoff(initial=0, factor=2, max_delay=300, jitter=False)
    assert backoff.delay_for(10) == 0
    assert backoff.delay_for(2000) == 0


def test_exponential_backoff_factor_one_stays_initial_for_huge_retry_numbers() -> None:
    backoff = ExponentialBackoff(initial=1, factor=1, max_delay=300, jitter=False)
    assert backoff.delay_for(10**400) == 1
