"""Where the test services are, and how a test asks for one.

The addresses come from the same environment variables as `scripts/services.py`, which starts
the services:

    SITQ_TEST_POSTGRES_DSN  default postgresql://root@127.0.0.1:5432/test
    SITQ_TEST_REDIS_URL     default redis://127.0.0.1:6379/0
    SITQ_TEST_NATS_URL      default nats://127.0.0.1:4222

`require(name, url)` skips the calling test when the service is not reachable, or fails it when
the CI environment variable is set, so that a missing service can't pass CI silently;
`require_module(name)` does the same for a Python package, and `absent(message)` for anything else
a test needs.
"""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType
from typing import NoReturn
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_NATS_URL",
    "DEFAULT_POSTGRES_DSN",
    "DEFAULT_REDIS_URL",
    "absent",
    "in_ci",
    "nats_url",
    "postgres_dsn",
    "reachable",
    "redis_url",
    "require",
    "require_module",
]

DEFAULT_POSTGRES_DSN = "postgresql://root@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

_DEFAULT_PORTS = {
    "postgresql": 5432,
    "postgres": 5432,
    "redis": 6379,
    "rediss": 6379,
    "nats": 4222,
    "tls": 4222,
}


def postgres_dsn() -> str:
    return os.environ.get("SITQ_TEST_POSTGRES_DSN") or DEFAULT_POSTGRES_DSN


def redis_url() -> str:
    return os.environ.get("SITQ_TEST_REDIS_URL") or DEFAULT_REDIS_URL


def nats_url() -> str:
    return os.environ.get("SITQ_TEST_NATS_URL") or DEFAULT_NATS_URL


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port
    except ValueError:
        port = None
    return host, port or _DEFAULT_PORTS.get(parts.scheme.lower(), 0)


def reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the URL's host and port succeeds within timeout seconds."""
    host, port = _host_port(url)
    if not port:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{netloc[1]}").geturl()


def absent(message: str) -> NoReturn:
    """Skip the current test because something it needs is missing (``message`` says what, and
    how to get it); fail it instead when CI is set, where everything must be there.

    Works in a test, a fixture or at module level (where it skips the whole module).
    """
    __tracebackhide__ = True
    import pytest

    if in_ci():
        pytest.fail(f"{message}. CI is set, so this is a failure.", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(name: str, url: str) -> None:
    """Skip the current test if the service is not reachable; fail it instead when CI is set."""
    __tracebackhide__ = True
    if not reachable(url):
        absent(
            f"{name} is not reachable at {_redact(url)}; start it with "
            "`python scripts/services.py` (or point the SITQ_TEST_* environment variables at a "
            "running server)"
        )


def require_module(name: str) -> ModuleType:
    """The module ``name``, imported; if it is not installed, the test (or the module, at module
    level) is skipped, or fails when CI is set."""
    __tracebackhide__ = True
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        absent(
            f"the Python module {name!r} cannot be imported ({exc}); install the extras: "
            "pip install -e '.[all,test]'"
        )
