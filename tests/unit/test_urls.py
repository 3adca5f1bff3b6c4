"""backend_from_url, redact_url and resolve_backend: no backend is connected here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sitq import MemoryBackend, SQLiteBackend
from sitq.backends import backend_from_url, redact_url, resolve_backend
from sitq.errors import ConfigurationError
from tests.services import require_module


def sqlite(url: str) -> SQLiteBackend:
    backend = backend_from_url(url)
    assert isinstance(backend, SQLiteBackend)
    assert not backend.connected
    return backend


def test_sqlite_three_slashes_is_a_relative_path() -> None:
    assert sqlite("sqlite:///rel.db").db_path == "rel.db"
    assert sqlite("sqlite:///dir/rel.db").db_path == "dir/rel.db"


def test_sqlite_four_slashes_is_an_absolute_path() -> None:
    assert sqlite("sqlite:////abs/x.db").db_path == "/abs/x.db"


def test_sqlite_path_is_percent_decoded() -> None:
    assert sqlite("sqlite:///my%20queue.db").db_path == "my queue.db"


def test_sqlite_scheme_is_case_insensitive() -> None:
    assert sqlite("SQLite:///x.db").db_path == "x.db"


def test_sqlite_defaults_without_query() -> None:
    backend = sqlite("sqlite:///x.db")
    assert backend.synchronous == "normal"
    assert backend.busy_timeout == 30.0


def test_sqlite_query_options() -> None:
    backend = sqlite("sqlite:///x.db?synchronous=full&busy_timeout=5")
    assert backend.db_path == "x.db"
    assert backend.synchronous == "full"
    assert backend.busy_timeout == 5.0


def test_sqlite_describe_gives_back_a_url_for_the_same_file(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "q.db")
    assert sqlite(backend.describe()).db_path == str(tmp_path / "q.db")
    assert not (tmp_path / "q.db").exists()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("sqlite:///x.db?journal=wal", "unknown sqlite URL option 'journal'"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous='sometimes'"),
        ("sqlite:///x.db?busy_timeout=soon", "busy_timeout='soon'"),
        ("sqlite:///x.db?busy_timeout=0", "busy_timeout"),
        ("sqlite:///x.db?busy_timeout=-1", "busy_timeout"),
    ],
)
def test_sqlite_bad_query_options(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        backend_from_url(url)


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://"])
def test_sqlite_url_without_file_is_rejected(url: str) -> None:
    with pytest.raises(ConfigurationError, match="names no database file"):
        backend_from_url(url)


def test_sqlite_url_with_host_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="has no host"):
        backend_from_url("sqlite://host/x.db")


def test_sqlite_memory_database_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="MemoryBackend"):
        backend_from_url("sqlite:///:memory:")


def test_memory_url() -> None:
    assert isinstance(backend_from_url("memory://"), MemoryBackend)


def test_memory_url_gives_a_new_backend_each_time() -> None:
    assert backend_from_url("memory://") is not backend_from_url("memory://")


def test_memory_url_rejects_options() -> None:
    with pytest.raises(ConfigurationError, match=r"takes no options, got \['size'\]"):
        backend_from_url("memory://?size=1")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "ftp://x", "postgres-ish://h"])
def test_unknown_scheme_lists_known_schemes(url: str) -> None:
    scheme = url.split("://")[0]
    with pytest.raises(ConfigurationError, match=f"unknown backend scheme '{scheme}'") as info:
        backend_from_url(url)
    from sitq.backends import url_schemes

    assert f"known schemes are {', '.join(sorted(url_schemes()))}" in str(info.value)
    assert "sqlite" in str(info.value)


def test_unknown_scheme_error_hides_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        backend_from_url("mysql://user:hunter2@host/db")
    assert "hunter2" not in str(info.value)
    assert "user:***@host" in str(info.value)


@pytest.mark.parametrize("url", ["sitq.db", "", "/abs/path.db", "sqlite:x.db", None, 42])
def test_non_urls_are_rejected_with_examples(url: Any) -> None:
    with pytest.raises(ConfigurationError, match="is not a backend URL") as info:
        backend_from_url(url)
    assert "sqlite:///sitq.db" in str(info.value)


# -- redact_url ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:secret@host/0", "redis://:***@host/0"),
        ("postgresql://secret:secret@h/db", "postgresql://secret:***@h/db"),
        ("postgresql://u:pw@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
    ],
)
def test_redact_url_hides_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    "url", ["redis://host:6379/0", "postgresql://user@h/db", "sqlite:///x.db", "memory://"]
)
def test_redact_url_leaves_urls_without_password_unchanged(url: str) -> None:
    assert redact_url(url) == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("nats://u:p%40ss@h:4222", "nats://***@h:4222"),
        ("nats://alice:s3cret@h1:4222", "nats://***@h1:4222"),
        ("tls://bob:pw@h2:4223", "tls://***@h2:4223"),
        ("nats://s3cr3t-token@h:4222", "nats://***@h:4222"),
        ("nats://h:4222", "nats://h:4222"),
    ],
)
def test_redact_url_hides_a_nats_user_name_with_its_password_or_token(
    url: str, expected: str
) -> None:
    """NATS user/password authentication makes the user name a credential as well."""
    assert redact_url(url) == expected


# -- resolve_backend -----------------------------------------------------------------------


def test_resolve_backend_none_is_sqlite_on_sitq_db() -> None:
    backend = resolve_backend(None)
    assert isinstance(backend, SQLiteBackend)
    assert backend.db_path == "sitq.db"
    assert not backend.connected


def test_resolve_backend_url_and_object() -> None:
    assert isinstance(resolve_backend("memory://"), MemoryBackend)
    backend = MemoryBackend()
    assert resolve_backend(backend) is backend


@pytest.mark.parametrize("bad", [42, b"memory://", object()])
def test_resolve_backend_rejects_other_types(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="backend must be"):
        resolve_backend(bad)


# -- edge cases that once slipped through ------------------------------------------------


def test_sqlite_nan_busy_timeout_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        backend_from_url("sqlite:///x.db?busy_timeout=nan")


def test_malformed_url_raises_configuration_error() -> None:
    with pytest.raises(ValueError) as info:  # noqa: PT011 - the type is the point
        backend_from_url("sqlite://[bad/x.db")
    assert isinstance(info.value, ConfigurationError)


def test_postgres_url_options_split_from_the_dsn() -> None:
    require_module("asyncpg")
    from sitq import PostgresBackend

    backend = backend_from_url(
        "postgresql://u:secret@db.example:5433/jobs?schema=app1&max_pool_size=4"
        "&synchronous_commit=off&sslmode=disable"
    )
    assert isinstance(backend, PostgresBackend)
    assert backend.schema == "app1"
    assert backend.max_pool_size == 4
    assert backend.synchronous_commit == "off"
    assert backend.dsn == "postgresql://u:secret@db.example:5433/jobs?sslmode=disable"
    assert "secret" not in backend.describe()
    with pytest.raises(ConfigurationError, match="schema"):
        backend_from_url("postgresql://h/db?schema=Bad-Name")
