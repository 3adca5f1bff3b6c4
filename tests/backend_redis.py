"""The Redis backend in the conformance suite: one key prefix per test, deleted afterwards; and
the same on a Redis Cluster of the test session's own."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.services import redis_url, require, require_module

if TYPE_CHECKING:
    from tests.conftest import BackendFactory
    from tests.servers import RedisCluster


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key that starts with ``prefix`` (SCAN + DEL, never FLUSHDB)."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch = []
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


def make_factory(tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
    """A factory for backends on the test Redis server under a prefix of their own."""
    # Imported here: tests.conftest imports this module while it is being set up.
    from sitq.backends.redis import RedisBackend
    from tests.conftest import BackendFactory, with_query

    require_module("redis")
    base = redis_url()
    require("redis", base)
    prefix = "t_" + uuid.uuid4().hex[:16]
    url = with_query(base, prefix=prefix)
    request.addfinalizer(lambda: asyncio.run(delete_prefix(base, prefix)))
    return BackendFactory("redis", lambda: RedisBackend.from_url(url), url)


def make_cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
    """A factory for ``cluster=true`` backends on the session's Redis Cluster (the
    ``redis_cluster`` fixture) under a prefix of their own. The keys are left in place: the
    cluster is thrown away at the end of the session."""
    from sitq.backends.redis import RedisBackend
    from tests.conftest import BackendFactory

    require_module("redis")
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    url = cluster.url(prefix="t_" + uuid.uuid4().hex[:16])
    return BackendFactory("redis-cluster", lambda: RedisBackend.from_url(url), url)
