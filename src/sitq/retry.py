"""Retry policies: pure decisions about whether and when a failed attempt runs again.

Nothing here does I/O. The worker engine asks the task's :class:`RetryPolicy` after each failed
attempt; the policy travels with the task as plain data (``to_dict``/``from_dict``), and
``retry_on`` classes are matched by name (``module:qualname``) so a worker needs not import them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sitq.errors import ConfigurationError, check_seconds


def _positive(name: str, value: float, *, allow_zero: bool = True) -> float:
    return check_seconds(name, value, allow_zero=allow_zero)


@dataclass(frozen=True, slots=True)
class FixedBackoff:
    """Wait the same ``delay`` seconds before every retry."""

    delay: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "delay", _positive("FixedBackoff.delay", self.delay))

    def delay_for(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
        return self.delay

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for storing with the task."""
        return {"kind": "fixed", "delay": self.delay}


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    """Wait ``initial * factor ** (n - 1)`` seconds before retry ``n``, capped at ``max_delay``.

    With ``jitter`` the wait is drawn uniformly from ``[0, that]`` ("full jitter"), which spreads
    retries of many tasks that failed together.
    """

    initial: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "initial", _positive("ExponentialBackoff.initial", self.initial))
        object.__setattr__(
            self, "max_delay", _positive("ExponentialBackoff.max_delay", self.max_delay)
        )
        factor = _positive("ExponentialBackoff.factor", self.factor)
        if factor < 1:
            raise ConfigurationError(f"ExponentialBackoff.factor must be >= 1, not {factor!r}")
        object.__setattr__(self, "factor", factor)
        if not isinstance(self.jitter, bool):
            raise ConfigurationError(
                f"ExponentialBackoff.jitter must be True or False, not {self.jitter!r}"
            )

    def delay_for(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
        exponent = max(retry_number - 1, 0)
        if self.initial == 0 or self.factor == 1:
            base = min(self.initial, self.max_delay)
        elif _log_growth(exponent, self.factor) + math.log(self.initial) >= math.log(
            self.max_delay or math.ulp(0)
        ):
            base = self.max_delay
        else:
            try:
                base = min(self.initial * self.factor**exponent, self.max_delay)
            except OverflowError:
                # factor ** exponent alone can pass the float range while a tiny initial brings
                # the product back under max_delay: take the product in logs.
                log_base = _log_growth(exponent, self.factor) + math.log(self.initial)
                base = min(math.exp(log_base), self.max_delay)
        return random.uniform(0, base) if self.jitter else base

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for storing with the task."""
        return {
            "kind": "exponential",
            "initial": self.initial,
            "factor": self.factor,
            "max_delay": self.max_delay,
            "jitter": self.jitter,
        }


def _log_growth(exponent: int, factor: float) -> float:
    try:
        return exponent * math.log(factor)
    except OverflowError:
        return math.inf


Backoff = FixedBackoff | ExponentialBackoff


def backoff_from_dict(data: dict[str, Any]) -> Backoff:
    """The backoff that ``to_dict`` described."""
    kind = data.get("kind")
    if kind == "fixed":
        return FixedBackoff(delay=data["delay"])
    if kind == "exponential":
        return ExponentialBackoff(
            initial=data["initial"],
            factor=data["factor"],
            max_delay=data["max_delay"],
            jitter=data["jitter"],
        )
    raise ConfigurationError(f"unknown backoff kind {kind!r}")


def _class_name(cls: type[BaseException]) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and when a failing task runs again.

    ``max_attempts`` counts the attempts that end in failure, the first one included (so ``1``
    means no retry). Only exceptions that are instances of a class in ``retry_on`` are retried;
    a timeout is seen as ``TimeoutError`` and a task raising :class:`sitq.Retry` always is
    (within ``max_attempts``). A worker lost mid-task is not the task's failure and does not
    count here (see ``max_deliveries``).
    """

    max_attempts: int = 3
    backoff: Backoff = field(default_factory=ExponentialBackoff)
    retry_on: tuple[type[BaseException], ...] | tuple[str, ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be an int, not {self.max_attempts!r}"
            )
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be >= 1 (1 = no retry), not {self.max_attempts}"
            )
        if not isinstance(self.backoff, FixedBackoff | ExponentialBackoff):
            raise ConfigurationError(
                "RetryPolicy.backoff must be a FixedBackoff or an ExponentialBackoff, "
                f"not {self.backoff!r}"
            )
        retry_on: Iterable[Any] = self.retry_on
        if isinstance(retry_on, type | str):
            retry_on = (retry_on,)
        names: list[str] = []
        for item in retry_on:
            if isinstance(item, str) and ":" in item:
                names.append(item)
            elif isinstance(item, type) and issubclass(item, BaseException):
                names.append(_class_name(item))
            else:
                raise ConfigurationError(
                    f"RetryPolicy.retry_on takes exception classes, not {item!r}"
                )
        object.__setattr__(self, "retry_on", tuple(names))

    @property
    def retry_on_names(self) -> tuple[str, ...]:
        """``module:qualname`` of each class in ``retry_on``."""
        return self.retry_on  # type: ignore[return-value]  # normalized in __post_init__

    def matches(self, exc_types: Sequence[str]) -> bool:
        """True if an exception whose class and bases are ``exc_types`` is to be retried."""
        wanted = self.retry_on_names
        return any(name in wanted for name in exc_types)

    def decide(
        self,
        failures: int,
        exc_types: Sequence[str],
        requested_delay: float | None,
        requested: bool,
    ) -> float | None:
        """Seconds until the next attempt, or ``None`` to fail for good.

        ``failures`` counts the failed attempts so far, this one included.
        """
        if failures >= self.max_attempts:
            return None
        if not requested and not self.matches(exc_types):
            return None
        if requested_delay is not None:
            return requested_delay
        return self.backoff.delay_for(failures)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, for storing with the task."""
        return {
            "max_attempts": self.max_attempts,
            "backoff": self.backoff.to_dict(),
            "retry_on": list(self.retry_on_names),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetryPolicy:
        """The policy that ``to_dict`` described."""
        return cls(
            max_attempts=int(data["max_attempts"]),
            backoff=backoff_from_dict(data["backoff"]),
            retry_on=tuple(str(n) for n in data["retry_on"]),
        )


NO_RETRY = RetryPolicy(max_attempts=1)
"""The default: a failed attempt is final."""
