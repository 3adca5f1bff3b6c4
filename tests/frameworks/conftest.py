"""Fixtures of the framework tests: a backend URL per backend the examples are run on, the
examples directory on the path, and subprocesses (workers) killed at teardown."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, drop_postgres_schema, with_query
from tests.services import postgres_dsn, require
from tests.web.server import Processes, processes

__all__ = ["examples", "processes", "start_worker", "url"]

EXAMPLES = REPO / "examples"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tasks.db'}"
        return
    dsn = postgres_dsn()
    require("postgres", dsn)
    schema = "t_" + uuid.uuid4().hex[:16]
    yield with_query(dsn, schema=schema)
    asyncio.run(drop_postgres_schema(dsn, schema))


@pytest.fixture
def examples(monkeypatch: pytest.MonkeyPatch) -> Path:
    """examples/ importable, as an application's own modules are (tasks are pickled by
    reference to them)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return EXAMPLES


def start_worker(processes: Processes, url: str, module: str) -> None:
    """``sitq worker URL --import module`` with examples/ on its path, killed at teardown."""
    path = os.pathsep.join([str(EXAMPLES), str(REPO), os.environ.get("PYTHONPATH", "")])
    processes.spawn(
        [sys.executable, "-m", "sitq", "worker", url, "--import", module, "--poll-interval", "0.2"],
        env={"PYTHONPATH": path},
    )
