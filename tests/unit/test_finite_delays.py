"""Retry delays and backoffs stay finite: a non-finite delay is refused where it is given, and a
backoff whose factor alone passes the float range still yields its (finite) wait."""

from __future__ import annotations

import math

import pytest

from sitq.errors import ConfigurationError, Retry
from sitq.retry import ExponentialBackoff


@pytest.mark.parametrize("delay", [math.inf, -math.inf, math.nan, -1.0])
def test_retry_refuses_a_delay_that_is_not_a_finite_number_of_seconds(delay: float) -> None:
    with pytest.raises(ConfigurationError, match="finite number of seconds >= 0"):
        Retry(delay)


def test_a_huge_factor_with_a_tiny_initial_gives_the_product_not_an_overflow() -> None:
    backoff = ExponentialBackoff(initial=1e-300, factor=1e300, max_delay=1.7e308, jitter=False)
    assert backoff.delay_for(3) == pytest.approx(1e300, rel=1e-9)
    assert backoff.delay_for(4) == 1.7e308


def test_ordinary_backoffs_are_exact() -> None:
    backoff = ExponentialBackoff(initial=1.0, factor=2.0, max_delay=300.0, jitter=False)
    assert [backoff.delay_for(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 16.0]
