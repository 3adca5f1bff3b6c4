"""Servers of the fault suite's own, on free loopback ports, that a test may crash and restart:
Redis, NATS JetStream and PostgreSQL. The shared test servers are never touched.

Redis and NATS reuse the process helpers of the backends' integration tests; PostgreSQL finds its
programs (``initdb``, ``pg_ctl``) and its server user as ``scripts/services.py`` does, since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import abc
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_until
from tests.integration.test_nats import NatsServers, _free_ports, _jetstream_ready, _nats_server
from tests.integration.test_redis import RedisProcess, _binary
from tests.services import in_ci


class OwnServer(abc.ABC):
    """A server started for one test; ``crash`` stops it at once, without a clean shutdown, and
    ``start`` starts it (again, on the same data) and waits until it answers."""

    name: str
    url: str

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    def crash(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> None: ...


class OwnRedis(OwnServer):
    """``redis-server`` with ``appendfsync always``: every acknowledged write survives a crash."""

    name = "redis"

    def __init__(self, directory: Path) -> None:
        self.process = RedisProcess(
            _binary("redis-server"), directory, "--appendonly", "yes", "--appendfsync", "always"
        )
        self.url = f"redis://127.0.0.1:{self.process.port}/0?prefix=faults"

    async def start(self) -> None:
        self.process.start()
        await self.process.ready()

    def crash(self) -> None:
        self.process.kill()  # SIGKILL

    def stop(self) -> None:
        self.process.kill()


class OwnNats(OwnServer):
    """``nats-server -js`` with a file store."""

    name = "nats"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.servers = NatsServers(_nats_server(), directory)
        (port,) = _free_ports(1)
        self.args = ["-js", "-sd", str(directory / "store"), "-a", "127.0.0.1", "-p", str(port)]
        self.server_url = f"nats://127.0.0.1:{port}"
        self.url = f"{self.server_url}?stream=FAULTS"

    async def start(self) -> None:
        self.servers.start("n1", self.args)
        await wait_until(lambda: _jetstream_ready(self.server_url), message="JetStream")

    def crash(self) -> None:
        self.servers.stop("n1")  # SIGKILL

    def stop(self) -> None:
        self.servers.kill_all()


def _services_script() -> types.ModuleType:
    """``scripts/services.py`` as a module, for its PostgreSQL helpers."""
    spec = importlib.util.spec_from_file_location("sitq_services", REPO / "scripts" / "services.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class OwnPostgres(OwnServer):
    """A throwaway PostgreSQL cluster; ``crash`` is an immediate stop (no checkpoint: the next
    start recovers from the WAL, as after a crash)."""

    name = "postgres"

    def __init__(self) -> None:
        services = _services_script()
        initdb, pg_ctl = services.pg_tool("initdb"), services.pg_tool("pg_ctl")
        user = services.pg_server_user()
        if not (initdb and pg_ctl and user):
            message = (
                "PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)"
                if user
                else "running as root and there is no 'postgres' user to run PostgreSQL as"
            )
            if in_ci():
                pytest.fail(f"{message}; CI is set, so this is a failure", pytrace=False)
            pytest.skip(message)
        self.services, self.user = services, user
        self.initdb: str = initdb
        self.pg_ctl: str = pg_ctl
        # Outside pytest's temporary directory, which the server's user may not enter.
        self.root = Path(tempfile.mkdtemp(prefix="sitq-faults-pg-"))
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        (self.port,) = _free_ports(1)
        self.url = f"postgresql://root@127.0.0.1:{self.port}/postgres?schema=faults"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            self.services.as_user(self.user, args), capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed: {result.stdout}{result.stderr}{self._log()[-2000:]}"
            )

    def _log(self) -> str:
        log = self.root / "server.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def _pg_ctl(self, *args: str) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"), *args)

    async def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._run(
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                "root",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            )
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
                )
        self._pg_ctl("-w", "-t", "60", "start")

    def crash(self) -> None:
        self._pg_ctl("-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._pg_ctl("-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def own_server(name: str, directory: Path) -> OwnServer:
    """A server of the given kind (not started yet)."""
    if name == "redis":
        return OwnRedis(directory)
    if name == "nats":
        return OwnNats(directory)
    return OwnPostgres()
