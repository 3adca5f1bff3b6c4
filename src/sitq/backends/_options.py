"""Reading a backend URL's query, written once: each backend names the options it takes and
their types; the values are converted and checked here, with errors that name the option and
the URL (its password hidden)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sitq.errors import ConfigurationError

__all__ = ["UrlOptions", "as_bool", "as_int", "as_seconds", "as_str"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

Convert = Callable[[str], Any]
"""Turns one query value into an option value, or raises ``ValueError`` saying what it wants."""


def as_str(value: str) -> str:
    """The value as it is."""
    return value


def as_int(value: str) -> int:
    """A whole number."""
    try:
        return int(value)
    except ValueError:
        raise ValueError("is not a whole number") from None


def as_seconds(value: str) -> float:
    """A finite number of seconds (its range is checked by the backend's constructor)."""
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("is not a number of seconds") from None
    if not math.isfinite(seconds):
        raise ValueError("is not a finite number of seconds")
    return seconds


def as_bool(value: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("is not a boolean: use true or false")


class UrlOptions:
    """A backend URL split into sitq's options (converted) and everything else.

    ``UrlOptions(url, {"prefix": as_str, "max_connections": as_int}, backend="Redis")``
    takes those names out of the query; ``options`` holds them converted (an option given
    twice keeps its last value; ``repeated`` names options kept as a list of every value).
    ``others`` are the remaining query pairs, in order, for a backend that hands them to its
    driver (``url_without_options``) or refuses them (``refuse_others``).
    """

    def __init__(
        self,
        url: str,
        known: Mapping[str, Convert],
        *,
        backend: str,
        repeated: frozenset[str] = frozenset(),
    ) -> None:
        from sitq.backends import redact_url

        self.url = url
        self.backend = backend
        self.known = known
        self._shown = redact_url(url)
        try:
            self.parts = urlsplit(url)
            pairs = parse_qsl(self.parts.query, keep_blank_values=True)
        except ValueError as exc:
            raise ConfigurationError(f"{self._shown} is not a valid URL: {exc}") from exc
        self.options: dict[str, Any] = {}
        self.others: list[tuple[str, str]] = []
        for name, value in pairs:
            convert = known.get(name)
            if convert is None:
                self.others.append((name, value))
                continue
            try:
                converted = convert(value)
            except ValueError as exc:
                raise ConfigurationError(
                    f"{name}={value!r} in {self._shown} {exc}"
                    if "password" not in name
                    else f"{name} in {self._shown} {exc}"
                ) from None
            if name in repeated:
                self.options.setdefault(name, []).append(converted)
            else:
                self.options[name] = converted

    def refuse_others(self) -> None:
        """Raise if the query holds anything but the known options."""
        if self.others:
            names = sorted({name for name, _ in self.others})
            unknown = ", ".join(repr(name) for name in names)
            raise ConfigurationError(
                f"unknown {self.backend} URL option{'s' if len(names) > 1 else ''} {unknown} "
                f"in {self._shown}: "
                f"known are {', '.join(sorted(self.known)) or 'none'}"
            )

    def url_without_options(self, *, scheme: str | None = None) -> str:
        """The URL with sitq's options taken out of its query (``scheme`` replaced if given),
        for a driver that reads the rest."""
        parts = self.parts._replace(query=urlencode(self.others))
        if scheme is not None:
            parts = parts._replace(scheme=scheme)
        return urlunsplit(parts)
