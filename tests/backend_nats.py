"""The NATS JetStream backend in the conformance suite: one stream (and bucket) per test, on the
test server or, with three replicas, on a three-node cluster of the test session's own."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from sitq.backends.nats import NATSBackend
from tests import services

if TYPE_CHECKING:
    from tests.conftest import BackendFactory
    from tests.servers import NatsCluster


async def delete_nats_stream(url: str, stream: str) -> None:
    """Remove a test's stream and bucket (with their consumers)."""
    import nats

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=1)
    try:
        for name in (stream, f"KV_{stream}", f"IX_{stream}"):
            reply = await nc.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=10)
            error = json.loads(reply.data).get("error")
            if error and error.get("err_code") != 10059:  # 10059: stream not found
                raise RuntimeError(f"deleting stream {name}: {error}")
    finally:
        await nc.close()


def unique_stream() -> str:
    return "T" + uuid.uuid4().hex.upper()


def make_factory(tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
    """Backends on the test NATS server, each test on its own stream."""
    # Imported here: conftest imports this module while it is being loaded.
    from tests.conftest import BackendFactory, with_query

    services.require_module("nats")
    url = services.nats_url()
    services.require("nats", url)
    stream = unique_stream()
    full = with_query(url, stream=stream)
    request.addfinalizer(lambda: asyncio.run(delete_nats_stream(url, stream)))
    return BackendFactory("nats", lambda: NATSBackend.from_url(full), full)


def make_cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> BackendFactory:
    """Backends on the session's 3-node NATS cluster (the ``nats_cluster_servers`` fixture),
    each test on its own stream with 3 replicas, reached through any of the nodes."""
    from tests.conftest import BackendFactory

    services.require_module("nats")
    cluster: NatsCluster = request.getfixturevalue("nats_cluster_servers")
    stream = unique_stream()
    url = cluster.url(stream)
    request.addfinalizer(lambda: asyncio.run(delete_nats_stream(cluster.urls[0], stream)))
    return BackendFactory("nats-cluster", lambda: NATSBackend.from_url(url), url)
