"""Backends, and ``backend_from_url``: a URL's scheme picks the backend whose ``scheme``
names it, and that backend's ``from_url`` reads the rest of the URL."""

from __future__ import annotations

import functools
import importlib
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from sitq.backends.base import Backend
from sitq.errors import ConfigurationError, MissingDependencyError

__all__ = [
    "Backend",
    "backend_from_url",
    "resolve_backend",
]

_BACKENDS = (
    "sitq.backends.memory:MemoryBackend",
    "sitq.backends.sqlite:SQLiteBackend",
    "sitq.backends.postgres:PostgresBackend",
    "sitq.backends.redis:RedisBackend",
    "sitq.backends.nats:NATSBackend",
)
"""The built-in backends (module:class); each names its URL schemes in ``scheme``."""


@functools.cache
def url_schemes() -> dict[str, type[Backend]]:
    """Every URL scheme ``backend_from_url`` knows, and the backend class it names."""
    registry: dict[str, type[Backend]] = {}
    for path in _BACKENDS:
        module, _, name = path.partition(":")
        cls = _load(module, name)
        for scheme in cls.scheme:
            registry[scheme] = cls
    return registry


def _load(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def require(module: str, extra: str, backend: str) -> Any:
    """Import an optional driver or raise an error naming the ``pip install`` that fixes it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{backend} needs the {module!r} package, which is not installed: "
            f"run  pip install 'sitq[{extra}]'"
        ) from exc


def backend_from_url(url: str) -> Backend:
    """The backend a URL names; options travel as query parameters.

    ``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``memory://``,
    ``postgresql://user@host:5432/db?schema=jobs``.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"{url!r} is not a backend URL: use e.g. sqlite:///sitq.db, "
            "postgresql://user@host/db, redis://host:6379/0 or nats://host:4222"
        )
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("nats", "tls"):  # nats://h1:4222,h2:4222: several
            parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigurationError(f"{redact_url(url)} is not a valid URL: {exc}") from exc
    scheme = parts.scheme.lower()
    schemes = url_schemes()
    if scheme not in schemes:
        raise ConfigurationError(
            f"unknown backend scheme {scheme!r} in {redact_url(url)}: "
            f"known schemes are {', '.join(sorted(schemes))}"
        )
    return schemes[scheme].from_url(url)


_SECRET_PARAM = re.compile(r"pass|secret|token|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``: in the user info, in query parameters
    that carry one (``?password=``, ``?sslpassword=``, ``?token=``...), and a NATS URL's whole
    user info (a token, or a user name and password: NATS counts the user name as a
    credential too)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc and parts.scheme.lower() in ("nats", "tls"):
        netloc = "***@" + netloc.rpartition("@")[2]
    elif password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = parts.query
    if _SECRET_PARAM.search(query):
        query = "&".join(_redact_param(p) for p in query.split("&"))
    if netloc == parts.netloc and query == parts.query:
        return url
    return parts._replace(netloc=netloc, query=query).geturl()


def _redact_param(param: str) -> str:
    name, sep, _ = param.partition("=")
    return f"{name}=***" if sep and _SECRET_PARAM.search(unquote(name)) else param


def resolve_backend(backend: Backend | str | None) -> Backend:
    """A backend object from an object, a URL, or ``None`` (``SQLiteBackend("sitq.db")``)."""
    if backend is None:
        from sitq.backends.sqlite import SQLiteBackend

        return SQLiteBackend("sitq.db")
    if isinstance(backend, str):
        return backend_from_url(backend)
    if isinstance(backend, Backend):
        return backend
    raise ConfigurationError(
        f"backend must be a Backend object, a URL string or None, not {backend!r}"
    )
