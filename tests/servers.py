"""Servers of a test's own, on free loopback ports, and what starts them: ``redis-server``
(alone, or three nodes as a Redis Cluster), ``nats-server`` (alone, or a three-node JetStream
cluster), a throwaway PostgreSQL cluster (``initdb``/``pg_ctl``) and a TCP proxy that can cut
connections. The shared test servers are never touched.

Every process is started in its own process group so that a test can kill it (and anything it
started) at once; whoever starts one stops it, in a fixture's teardown or a ``finally``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import types
import uuid
from pathlib import Path
from typing import Any

from tests.conftest import REPO, wait_until
from tests.services import absent

# -- programs and ports -------------------------------------------------------------------------


def binary(name: str, package: str | None = None) -> str:
    """The path of an installed program (also looked for in /usr/sbin, where Debian puts
    nats-server); skips the test where it is missing, or fails it when CI is set."""
    found = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if found is None:
        absent(f"{name} is not installed (apt-get install {package or name})")
    return found


def redis_server() -> str:
    """The redis-server program (see :func:`binary`)."""
    return binary("redis-server")


def nats_server() -> str:
    """The nats-server program (see :func:`binary`)."""
    return binary("nats-server")


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; for a cluster node, port + 10000 (its cluster bus) is free too."""
    if not cluster:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(1000):
        port = random.randint(20000, 30000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise AssertionError("no free pair of ports for a cluster node")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# -- Redis -------------------------------------------------------------------------------------


class RedisProcess:
    """One ``redis-server`` on a loopback port, in a directory of its own."""

    def __init__(self, binary: str, directory: Path, *args: str) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port(cluster="--cluster-enabled" in args)
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--daemonize",
                "no",
                *self.args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
            start_new_session=True,
        )
        log.close()

    async def ready(self, timeout: float = 20.0) -> None:
        import redis.asyncio

        async def pong() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"redis-server exited: {(self.directory / 'server.log').read_text()[-2000:]}"
                )
            client = redis.asyncio.Redis(port=self.port, socket_connect_timeout=1)
            try:
                return bool(await client.ping())
            except (redis.RedisError, OSError):
                return False
            finally:
                await client.aclose()

        await wait_until(pong, timeout=timeout, message=f"redis-server on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def admin(self) -> Any:
        import redis.asyncio

        return redis.asyncio.Redis(port=self.port)


class RedisCluster:
    """A Redis Cluster of three ``redis-server`` nodes (primaries only, the slots split evenly)."""

    def __init__(self, root: Path) -> None:
        program = redis_server()
        self.nodes = [
            RedisProcess(
                program,
                root / f"node{i}",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "5000",
                "--appendonly",
                "no",
            )
            for i in range(3)
        ]

    async def start(self) -> None:
        """Start the nodes, join them and wait until every node reports the cluster ok."""
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            await node.ready()
        cli = shutil.which("redis-cli")
        if cli is not None:
            done = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        else:
            await self._join_by_hand()
        await wait_until(self._ok, timeout=30, message="the Redis Cluster to be ready")

    async def _join_by_hand(self) -> None:
        bounds = [0, 5461, 10923, 16384]
        for i, node in enumerate(self.nodes):
            client = node.admin()
            try:
                await client.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1
                )
                if i:
                    await client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
            finally:
                await client.aclose()

    async def _ok(self) -> bool:
        for node in self.nodes:
            client = node.admin()
            try:
                info = await client.execute_command("CLUSTER", "INFO")
            finally:
                await client.aclose()
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or "cluster_known_nodes:3" not in text:
                return False
        return True

    def url(self, prefix: str) -> str:
        """A ``cluster=true`` URL (through the first node) whose keys start with ``prefix``."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=true&prefix={prefix}"

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


# -- NATS --------------------------------------------------------------------------------------


class NatsServers:
    """nats-server processes started by one test; all killed at teardown."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.args: dict[str, list[str]] = {}

    def start(self, name: str, args: list[str]) -> None:
        self.args[name] = args
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [self.binary, *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()

    def stop(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name, self.args[name])

    def kill_all(self) -> None:
        for name in self.procs:
            self.stop(name)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


async def _not_yet(error: Exception) -> None:
    """A connection error while a server is starting is the answer "not yet", not news."""


async def jetstream_ready(url: str) -> bool:
    """Whether JetStream answers (in a cluster: a meta leader has been elected)."""
    import nats

    try:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0, error_cb=_not_yet)
    except Exception:
        return False
    try:
        reply = await nc.request("$JS.API.INFO", b"", timeout=1)
        return "error" not in json.loads(reply.data)
    except Exception:
        return False
    finally:
        await nc.close()


async def replicas_placeable(url: str, replicas: int = 3) -> bool:
    """Whether a throwaway stream with ``replicas`` replicas can be created (it is removed again):
    a meta leader can answer before it sees every peer as current."""
    import nats

    try:
        nc = await nats.connect(url, connect_timeout=1, max_reconnect_attempts=0, error_cb=_not_yet)
    except Exception:
        return False
    try:
        js = nc.jetstream(timeout=2)
        name = "PROBE" + uuid.uuid4().hex[:8].upper()
        await js.add_stream(name=name, subjects=[name.lower() + ".>"], num_replicas=replicas)
        await js.delete_stream(name)
        return True
    except Exception:
        return False
    finally:
        await nc.close()


class NatsCluster:
    """Three clustered ``nats-server`` processes with JetStream (file store each)."""

    def __init__(self, root: Path) -> None:
        self.servers = NatsServers(nats_server(), root)
        self.root = root
        ports = free_ports(6)
        self.client_ports, self.route_ports = ports[:3], ports[3:]
        self.urls = [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    async def start(self) -> None:
        """Start the nodes and wait until a stream with three replicas can be placed."""
        for i in range(3):
            others = ",".join(f"nats://127.0.0.1:{self.route_ports[j]}" for j in range(3) if j != i)
            self.servers.start(
                f"n{i + 1}",
                [
                    "-js",
                    "-sd",
                    str(self.root / f"n{i + 1}"),
                    "-a",
                    "127.0.0.1",
                    "-p",
                    str(self.client_ports[i]),
                    "-server_name",
                    f"n{i + 1}",
                    "-cluster_name",
                    "c1",
                    "-cluster",
                    f"nats://127.0.0.1:{self.route_ports[i]}",
                    "-routes",
                    others,
                ],
            )
        for url in self.urls:
            await wait_until(
                lambda u=url: jetstream_ready(u),
                timeout=60,
                interval=0.2,
                message=f"JetStream at {url} (a meta leader elected)",
            )
        await wait_until(
            lambda: replicas_placeable(self.urls[0]),
            timeout=60,
            interval=0.2,
            message="a stream with 3 replicas to be placeable",
        )

    def url(self, stream: str, first: int = 0) -> str:
        """A URL naming every node (``first`` tried first) for a stream with 3 replicas."""
        ordered = self.urls[first:] + self.urls[:first]
        others = "&".join(f"server={u}" for u in ordered[1:])
        return f"{ordered[0]}?{others}&stream={stream}&replicas=3"

    def kill(self) -> None:
        self.servers.kill_all()


# -- a proxy that cuts connections -------------------------------------------------------------


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.cut_connections = 0
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a cut)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        """Client connections being forwarded now."""
        return len(self._links)

    async def cut(self) -> int:
        """Stop listening, so that new connections are refused, and reset every open one.

        Returns how many connections were cut.
        """
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        links, self._links = self._links, set()
        for client_w, server_w in links:
            client_w.transport.abort()
            server_w.transport.abort()
        self.cut_connections += len(links)
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        return len(links)

    async def close(self) -> None:
        await self.cut()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.transport.abort()
            return
        if self._server is None:  # cut while the upstream connection was being made
            client_w.transport.abort()
            server_w.transport.abort()
            return
        self.accepted += 1
        link = (client_w, server_w)
        self._links.add(link)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            pump = asyncio.create_task(self._pump(reader, writer, link))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            # One side is gone: close both, so that each peer sees it.
            self._links.discard(link)
            for w in link:
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()


# -- servers a test may crash and restart ------------------------------------------------------


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
            redis_server(), directory, "--appendonly", "yes", "--appendfsync", "always"
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
        self.servers = NatsServers(nats_server(), directory)
        port = free_port()
        self.args = ["-js", "-sd", str(directory / "store"), "-a", "127.0.0.1", "-p", str(port)]
        self.server_url = f"nats://127.0.0.1:{port}"
        self.url = f"{self.server_url}?stream=FAULTS"

    async def start(self) -> None:
        self.servers.start("n1", self.args)
        await wait_until(lambda: jetstream_ready(self.server_url), message="JetStream")

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
            absent(
                "PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)"
                if user
                else "running as root and there is no 'postgres' user to run PostgreSQL as"
            )
        self.services, self.user = services, user
        self.initdb: str = initdb
        self.pg_ctl: str = pg_ctl
        # Outside pytest's temporary directory, which the server's user may not enter.
        self.root = Path(tempfile.mkdtemp(prefix="sitq-faults-pg-"))
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self.data = self.root / "data"
        self.port = free_port()
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
