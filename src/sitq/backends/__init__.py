"""Backends, and ``backend_from_url``: a URL scheme picks the backend module, imported lazily
so that the core install needs no server driver."""

from __future__ import annotations

import importlib
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from sitq.backends.base import Backend
from sitq.errors import ConfigurationError, MissingDependencyError

__all__ = [
    "Backend",
    "backend_from_url",
    "resolve_backend",
]

_SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("sitq.backends.memory", "MemoryBackend"),
    "sqlite": ("sitq.backends.sqlite", "SQLiteBackend"),
    "postgresql": ("sitq.backends.postgres", "PostgresBackend"),
    "postgres": ("sitq.backends.postgres", "PostgresBackend"),
    "redis": ("sitq.backends.redis", "RedisBackend"),
    "rediss": ("sitq.backends.redis", "RedisBackend"),
    "nats": ("sitq.backends.nats", "NATSBackend"),
    "tls": ("sitq.backends.nats", "NATSBackend"),
}


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
    if scheme not in _SCHEMES:
        raise ConfigurationError(
            f"unknown backend scheme {scheme!r} in {redact_url(url)}: "
            f"known schemes are {', '.join(sorted(_SCHEMES))}"
        )
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    if scheme == "memory":
        if params:
            raise ConfigurationError(f"memory:// takes no options, got {sorted(params)}")
        return _load(*_SCHEMES["memory"])()  # type: ignore[no-any-return]
    if scheme == "sqlite":
        path = unquote(parts.path)
        if parts.netloc:
            raise ConfigurationError(
                f"{url!r}: a sqlite URL has no host; use sqlite:///relative.db or "
                "sqlite:////absolute/path.db"
            )
        if path.startswith("/"):
            path = path[1:]
        if not path:
            raise ConfigurationError(f"{url!r} names no database file")
        cls = _load(*_SCHEMES["sqlite"])
        return cls(path, **cls.options_from_query(params))  # type: ignore[no-any-return]
    # Every server backend class builds itself from its URL: ``Class.from_url(url)``.
    return _load(*_SCHEMES[scheme]).from_url(url)  # type: ignore[no-any-return]


_SECRET_PARAM = re.compile(r"pass|secret|token|credential", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``: in the user info, in query parameters
    that carry one (``?password=``, ``?sslpassword=``, ``?token=``...), and a NATS URL's user
    info without a password (a token)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if password is None and "@" in netloc and parts.scheme.lower() in ("nats", "tls"):
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
        return _load(*_SCHEMES["sqlite"])("sitq.db")  # type: ignore[no-any-return]
    if isinstance(backend, str):
        return backend_from_url(backend)
    if isinstance(backend, Backend):
        return backend
    raise ConfigurationError(
        f"backend must be a Backend object, a URL string or None, not {backend!r}"
    )
