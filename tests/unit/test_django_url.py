"""sitq.contrib.django without a URL: the PostgreSQL backend's URL is made from the Django
database's connection parameters, and the backend reads it back as they were."""

from __future__ import annotations

from sitq import PostgresBackend
from tests.services import require_module

require_module("django")
require_module("asyncpg")

from sitq.contrib.django._settings import postgres_url  # noqa: E402


def test_every_part_is_quoted_and_driver_only_parameters_are_left_out() -> None:
    params = {
        "dbname": "shop db",
        "user": "app@x",
        "password": "p:w/d?#",
        "host": "db.example",
        "port": 5433,
        "sslmode": "verify-full",
        "sslrootcert": "/etc/ssl/root.crt",
        "cursor_factory": object(),  # psycopg's, from Django: not for asyncpg
        "client_encoding": "UTF8",
    }
    url = postgres_url(params, {"schema": "jobs", "max_pool_size": "5"})
    assert url == (
        "postgresql://app%40x:p%3Aw%2Fd%3F%23@db.example:5433/shop%20db"
        "?sslmode=verify-full&sslrootcert=%2Fetc%2Fssl%2Froot.crt&schema=jobs&max_pool_size=5"
    )
    backend = PostgresBackend.from_url(url)
    assert (backend.schema, backend.max_pool_size) == ("jobs", 5)
    assert "schema" not in backend.dsn and "sslmode=verify-full" in backend.dsn


def test_a_unix_socket_directory_and_an_ipv6_address() -> None:
    socket = postgres_url({"dbname": "shop", "host": "/var/run/postgresql", "user": "app"}, {})
    assert socket == "postgresql://app@/shop?host=%2Fvar%2Frun%2Fpostgresql"
    ipv6 = postgres_url({"dbname": "shop", "host": "::1", "port": "5432"}, {})
    assert ipv6 == "postgresql://[::1]:5432/shop"
    assert PostgresBackend.from_url(ipv6).dsn == ipv6
