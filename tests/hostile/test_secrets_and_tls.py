"""The security claims about backend URLs, shown against real servers and drivers.

* A password in a backend URL (in the user info, or as a ``?password=``-style query
  parameter; a NATS token) never shows in ``describe()``, ``repr`` of a backend or a queue,
  the ``BackendError`` of a failed connection (message and chained causes), log records,
  ``sitq info``'s output or error, or a ``sitq worker``'s startup line and log.
* TLS settings reach the drivers: PostgreSQL's ``?sslmode=`` (``require`` against a server
  without TLS fails with the driver's SSL error; where the server has TLS, sitq's connections
  are encrypted, as ``pg_stat_ssl`` shows), Redis's ``rediss://`` (against a TLS server of the
  test's own: the certificate is checked, and with ``?ssl_ca_certs=`` the backend works over
  TLS), and NATS's ``tls://`` (likewise, with ``?tls_ca=``; a plain-text server is refused).

Servers of the test's own (``redis-server``, ``nats-server``, with a certificate made by
``openssl``) run on free loopback ports and are always stopped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sitq import AsyncWorker, BackendError, TaskQueue, TaskStatus, backend_from_url
from sitq.backends import redact_url
from tests.conformance import tasks
from tests.conftest import REPO, WorkerProcesses, with_query
from tests.servers import binary, free_port
from tests.services import nats_url, postgres_dsn, require

SECRET = "Zq9-s3cr3t-Pw"


# -- redact_url ---------------------------------------------------------------------------------

PASSWORDS = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs")), min_size=4, max_size=24
)


@settings(max_examples=150, deadline=None)
@given(
    password=PASSWORDS,
    scheme=st.sampled_from(["postgresql", "redis", "rediss", "nats", "tls", "http"]),
    user=st.sampled_from(["", "app", "admin.user"]),
    param=st.sampled_from(["password", "sslpassword", "token", "auth_token", "PASSWORD"]),
)
def test_redact_url_never_shows_a_password(
    password: str, scheme: str, user: str, param: str
) -> None:
    quoted = quote(password, safe="")
    for url in (
        f"{scheme}://{user}:{quoted}@db.example:1234/0?schema=s",
        f"{scheme}://{user}@db.example:1234/0?{param}={quoted}&schema=s",
        f"{scheme}://{user}:{quoted}@db.example:1234/0?x=1&{param}={quoted}",
    ):
        assume(url.count(quoted) == url.count(quoted + "@") + url.count("=" + quoted))
        shown = redact_url(url)
        assert quoted not in shown, (url, shown)
        assert "***" in shown
    token_url = f"nats://{quoted}@h:4222"
    assert quoted not in redact_url(token_url)


# -- errors, repr and logs of a failed connection -----------------------------------------------


URLS = {
    "postgres": "postgresql://app:{pw}@127.0.0.1:{port}/db?connect_timeout=2",
    "postgres-query": "postgresql://app@127.0.0.1:{port}/db?password={pw}&connect_timeout=2",
    "redis": "redis://:{pw}@127.0.0.1:{port}/0?connect_timeout=2",
    "redis-user": "redis://app:{pw}@127.0.0.1:{port}/0?connect_timeout=2",
    "redis-query": "redis://127.0.0.1:{port}/0?password={pw}&connect_timeout=2",
    "rediss": "rediss://app:{pw}@127.0.0.1:{port}/0?connect_timeout=2",
    "nats": "nats://app:{pw}@127.0.0.1:{port}?connect_timeout=1",
    "nats-token": "nats://{pw}@127.0.0.1:{port}?connect_timeout=1",
    "tls": "tls://app:{pw}@127.0.0.1:{port}?connect_timeout=1",
}


def _everything_shown(exc: BaseException) -> str:
    return str(exc) + "\n" + "".join(traceback.format_exception(exc))


@pytest.mark.parametrize("name", list(URLS))
async def test_a_password_never_shows_when_the_connection_fails(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = URLS[name].format(pw=SECRET, port=free_port())
    backend = backend_from_url(url)
    queue = TaskQueue(backend)
    shown = [backend.describe(), repr(backend), str(backend), repr(queue)]
    assert "***" in backend.describe()
    with pytest.raises(BackendError) as caught:
        await queue.connect()
    assert "connect" in str(caught.value)
    shown.append(_everything_shown(caught.value))
    shown += [record.getMessage() for record in caplog.records]
    shown.append(caplog.text)
    assert SECRET not in "\n".join(shown)


def _sitq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "-m", "sitq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


@pytest.mark.parametrize("name", ["postgres", "redis-query", "nats-token"])
def test_sitq_info_and_worker_errors_never_show_the_password(name: str) -> None:
    url = URLS[name].format(pw=SECRET, port=free_port())
    info = _sitq("info", url)
    worker = _sitq(
        "worker",
        url,
        "--log-level",
        "DEBUG",
        "--import",
        "tests.conformance.tasks",
        "--connect-timeout",
        "2",
    )
    for run in (info, worker):
        assert run.returncode == 1, run  # not reachable: refused, not a usage error
        assert "sitq: cannot connect" in run.stderr
        assert SECRET not in run.stdout + run.stderr
    # The worker retried until --connect-timeout, saying so each time, with the URL redacted.
    assert "backend unreachable (cannot connect" in worker.stderr, worker.stderr
    assert "; retrying in " in worker.stderr and "***" in worker.stderr


# -- the same against servers that accept the password ------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def own_server(args: list[str], port: int, directory: Path) -> Iterator[Server]:
    """A server process of this test, in its own process group, killed afterwards."""
    log = directory / f"server-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Server(proc, port, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


async def _listening(server: Server, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        assert server.proc.poll() is None, f"the server exited:\n{server.output()}"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(f"server on port {server.port} did not start") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (the certificate is its own CA)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            binary("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def own_redis(tmp_path: Path, certificate: tuple[Path, Path]) -> AsyncIterator[Server]:
    """``redis-server`` with a password, on a plain port (``.port``) and a TLS port
    (``.tls_port``)."""
    cert, key = certificate
    plain, tls = free_port(), free_port()
    args = [
        binary("redis-server"),
        "--bind",
        "127.0.0.1",
        "--port",
        str(plain),
        "--tls-port",
        str(tls),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        SECRET,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(tmp_path),
    ]
    with own_server(args, plain, tmp_path) as server:
        await _listening(server)
        await _listening(Server(server.proc, tls, server.log))
        server.tls_port = tls  # type: ignore[attr-defined]
        yield server


@pytest.fixture
async def own_tls_nats(tmp_path: Path, certificate: tuple[Path, Path]) -> AsyncIterator[Server]:
    """``nats-server`` with JetStream that requires TLS."""
    cert, key = certificate
    port = free_port()
    store = tmp_path / "jetstream"
    args = [
        binary("nats-server"),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-js",
        "-sd",
        str(store),
        "--tls",
        "--tlscert",
        str(cert),
        "--tlskey",
        str(key),
    ]
    with own_server(args, port, tmp_path) as server:
        await _listening(server)
        yield server


def _shared_nats_url() -> str:
    url = nats_url()
    require("nats", url)
    return url


async def _delete_stream(url: str, stream: str) -> None:
    from tests.backend_nats import delete_nats_stream

    await delete_nats_stream(url, stream)


async def _drop_schema(schema: str) -> None:
    from tests.conftest import drop_postgres_schema

    await drop_postgres_schema(postgres_dsn(), schema)


def _with_password(url: str, password: str) -> str:
    """``url`` with ``user:password@`` (or ``:password@`` when it names no user)."""
    scheme, _, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user = userinfo.partition(":")[0] if at else ""
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}"


async def test_worker_startup_line_log_and_sitq_info_hide_the_password(
    worker_processes: WorkerProcesses, own_redis: Server
) -> None:
    """A worker and ``sitq info`` on each server backend, through a URL with a password the
    server accepts (PostgreSQL and NATS here ignore it; the Redis server requires it)."""
    base = postgres_dsn()
    require("postgres", base)
    schema = "t_" + uuid.uuid4().hex[:16]
    stream = "T" + uuid.uuid4().hex.upper()
    urls = {
        "postgres": with_query(_with_password(base, SECRET), schema=schema),
        "redis": f"redis://:{SECRET}@127.0.0.1:{own_redis.port}/0?prefix=t_secret",
        "nats": with_query(_with_password(_shared_nats_url(), SECRET), stream=stream),
    }
    try:
        procs = {
            name: worker_processes.start(url, extra=("--log-level", "DEBUG"))
            for name, url in urls.items()
        }
        for name, url in urls.items():
            async with TaskQueue(url) as queue:
                task_id = await queue.enqueue(tasks.add, 2, 3)
                assert await queue.get_value(task_id, timeout=30) == 5, name
            info = _sitq("info", url)
            assert info.returncode == 0, info
            assert "***" in info.stdout and SECRET not in info.stdout + info.stderr
            proc = procs[name]
            assert worker_processes.stop(proc) == 0
            output = worker_processes.output(proc)
            assert "sitq async worker" in output and "***@" in output, output
            assert "started on" in output, output  # the engine's own log line, at INFO
            assert SECRET not in output, f"{name}: the password is in the worker's output"
    finally:
        await _drop_schema(schema)
        await _delete_stream(_shared_nats_url(), stream)


# -- TLS reaches the drivers --------------------------------------------------------------------


async def test_postgres_sslmode_reaches_the_driver() -> None:
    import asyncpg

    base = postgres_dsn()
    require("postgres", base)
    for mode in ("require", "disable"):
        schema = "t_" + uuid.uuid4().hex[:16]
        backend = backend_from_url(with_query(base, sslmode=mode, schema=schema))
        try:
            refused = ""
            try:
                await backend.connect()
            except BackendError as exc:
                refused = str(exc)
            if refused:
                # A server without TLS: the driver asked for it and was refused.
                assert mode == "require", refused
                assert "SSL" in refused, refused
                continue
            conn = await asyncpg.connect(base)
            try:
                encrypted = await conn.fetch(
                    "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                    "WHERE a.application_name = $1",
                    f"sitq:{schema}",
                )
            finally:
                await conn.close()
            assert encrypted, "sitq's connections were not found"
            assert all(row["ssl"] is (mode == "require") for row in encrypted), (mode, encrypted)
        finally:
            await backend.close()
            await _drop_schema(schema)


async def test_rediss_reaches_the_driver(
    own_redis: Server, certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cert, _ = certificate
    port = own_redis.tls_port  # type: ignore[attr-defined]
    untrusted = backend_from_url(f"rediss://:{SECRET}@127.0.0.1:{port}/0?connect_timeout=5")
    with pytest.raises(BackendError) as caught:
        await untrusted.connect()
    assert "certificate verify failed" in str(caught.value).lower(), caught.value
    assert SECRET not in _everything_shown(caught.value) + caplog.text

    url = f"rediss://:{SECRET}@127.0.0.1:{port}/0?prefix=t_tls&ssl_ca_certs={cert}"
    async with TaskQueue(url) as queue, AsyncWorker(queue.backend, poll_interval=0.2):
        task_id = await queue.enqueue(tasks.add, 20, 22)
        assert await queue.get_value(task_id, timeout=20) == 42


async def test_nats_tls_reaches_the_driver(
    own_tls_nats: Server, certificate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cert, _ = certificate
    port = own_tls_nats.port
    untrusted = backend_from_url(f"tls://app:{SECRET}@127.0.0.1:{port}?connect_timeout=1")
    with pytest.raises(BackendError) as caught:
        await untrusted.connect()
    assert "certificate_verify_failed" in str(caught.value).lower(), caught.value
    assert SECRET not in _everything_shown(caught.value) + caplog.text

    url = f"tls://app:{SECRET}@127.0.0.1:{port}?stream=TLS&tls_ca={cert}"
    async with TaskQueue(url) as queue, AsyncWorker(queue.backend, poll_interval=0.2):
        task_id = await queue.enqueue(tasks.add, 40, 2)
        assert await queue.get_status(task_id) is not None
        assert await queue.get_value(task_id, timeout=20) == 42
        assert (await queue.get_result(task_id)).status is TaskStatus.SUCCESS  # type: ignore[union-attr]


async def test_tls_url_refuses_a_plain_text_nats_server() -> None:
    plain = _shared_nats_url()
    host = plain.partition("://")[2]
    backend = backend_from_url(f"tls://{host}?connect_timeout=2")
    with pytest.raises(BackendError, match="does not use TLS"):
        await backend.connect()
    assert not backend.connected
