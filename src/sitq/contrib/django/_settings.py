"""The ``SITQ`` Django setting: read, checked, and turned into a backend URL."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

KEYS = ("URL", "DATABASE", "BACKEND_OPTIONS", "TASK_OPTIONS")
"""The keys ``SITQ`` may have."""

# Connection parameters of a Django PostgreSQL database that carry over to sitq's own
# connections (asyncpg reads them from the URL); the rest (cursor classes, pools, ...) are
# psycopg's or Django's alone.
_CARRIED = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslpassword",
    "passfile",
    "target_session_attrs",
)

_EXAMPLE = (
    "SITQ = {'URL': 'sqlite:///tasks.db'} (any sitq URL), or SITQ = {'DATABASE': 'default'} "
    "to keep the tasks in that PostgreSQL database, in the same transactions"
)


@dataclass(frozen=True)
class SitqSettings:
    """``SITQ``, checked.

    ``url`` is the backend's URL, or ``None`` when the tasks live in the Django database
    ``database`` (PostgreSQL), where enqueueing joins that database's transaction. With a URL,
    enqueueing waits for ``database``'s commit instead.
    """

    url: str | None
    database: str
    backend_options: dict[str, str] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)

    @property
    def same_transaction(self) -> bool:
        """True when tasks are inserted through Django's own connection, in its transaction."""
        return self.url is None


def _fail(message: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"SITQ setting: {message}")


def read_settings() -> SitqSettings:
    """``settings.SITQ`` checked; ``ImproperlyConfigured`` naming what is wrong and the fix."""
    raw = getattr(settings, "SITQ", None)
    if raw is None:
        raise _fail(f"it is missing: add {_EXAMPLE}")
    if not isinstance(raw, dict):
        raise _fail(f"it must be a dict, not {type(raw).__name__}: {_EXAMPLE}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise _fail(f"unknown key(s) {unknown}; the keys are {list(KEYS)}")
    url = raw.get("URL")
    if url is not None and (not isinstance(url, str) or not url.strip()):
        raise _fail(f"URL must be a sitq backend URL, not {url!r}")
    database = raw.get("DATABASE", "default")
    if not isinstance(database, str) or database not in settings.DATABASES:
        raise _fail(
            f"DATABASE={database!r} is not one of the DATABASES ({sorted(settings.DATABASES)})"
        )
    backend_options = raw.get("BACKEND_OPTIONS", {})
    if not isinstance(backend_options, dict):
        raise _fail(f"BACKEND_OPTIONS must be a dict, not {type(backend_options).__name__}")
    if backend_options and url is not None:
        raise _fail(
            "BACKEND_OPTIONS is for the database named by DATABASE: with a URL, give the "
            "options in it (...?schema=jobs&max_pool_size=5)"
        )
    task_options = raw.get("TASK_OPTIONS", {})
    if not isinstance(task_options, dict):
        raise _fail(f"TASK_OPTIONS must be a dict, not {type(task_options).__name__}")
    if url is None:
        vendor = connections[database].vendor
        if vendor != "postgresql":
            raise _fail(
                f"without a URL the tasks live in the database {database!r}, which must be "
                f"PostgreSQL (it is {vendor}): give a URL, e.g. "
                "SITQ = {'URL': 'sqlite:///tasks.db'}"
            )
        driver = getattr(connections[database], "Database", None)
        if getattr(driver, "__name__", "") != "psycopg":
            raise _fail(
                f"enqueueing in the transactions of {database!r} needs Django to use psycopg 3 "
                "(pip install 'psycopg[binary]'), not psycopg2"
            )
    return SitqSettings(
        url=url,
        database=database,
        backend_options={str(k): str(v) for k, v in backend_options.items()},
        task_options=dict(task_options),
    )


def backend_url(conf: SitqSettings) -> str:
    """The backend's URL: ``conf.url``, or the one of the Django database, as its connection
    stands now (under the test runner: the test database)."""
    if conf.url is not None:
        return conf.url
    params = connections[conf.database].get_connection_params()
    if not params.get("dbname"):
        raise _fail(
            f"the database {conf.database!r} has no NAME (a libpq service?): give sitq's URL "
            "as SITQ['URL'] (tasks then wait for the commit instead of joining it)"
        )
    return postgres_url(params, conf.backend_options)


def postgres_url(params: dict[str, Any], backend_options: dict[str, str]) -> str:
    """A ``postgresql://`` URL for the libpq connection parameters ``params`` (``dbname``,
    ``user``, ``password``, ``host``, ``port``, ``sslmode``...; others are left out), with the
    backend's options (``schema``, ``max_pool_size``...) as query parameters."""
    user = str(params.get("user") or "")
    password = str(params.get("password") or "")
    host = str(params.get("host") or "")
    port = str(params.get("port") or "")
    query = {key: str(params[key]) for key in _CARRIED if params.get(key)}
    if host.startswith("/"):  # a Unix socket directory
        query["host"] = host
        host = ""
    elif ":" in host:  # an IPv6 address
        host = f"[{host}]"
    query.update(backend_options)
    auth = ""
    if user:
        auth = quote(user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        auth += "@"
    netloc = f"{auth}{host}{':' + port if port else ''}"
    url = f"postgresql://{netloc}/{quote(str(params['dbname']), safe='')}"
    return f"{url}?{urlencode(query)}" if query else url
