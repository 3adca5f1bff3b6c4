#!/usr/bin/env python3
"""Make sure the services sitq's tests need are reachable: PostgreSQL, Redis and NATS.

Usage:
    python scripts/services.py          # check each service, start the missing ones
    python scripts/services.py --check  # only report, never start anything
    python scripts/services.py --stop   # stop the servers this script started itself
                                        # (in its own state dir; never system services)

Addresses come from the same environment variables the tests read:

    SITQ_TEST_POSTGRES_DSN  default postgresql://root@127.0.0.1:5432/test
    SITQ_TEST_REDIS_URL     default redis://127.0.0.1:6379/0
    SITQ_TEST_NATS_URL      default nats://127.0.0.1:4222

A service that is not reachable is started if it is on a loopback address and its server is
installed: on Debian, as root and on the default port, with the distribution's own commands
(pg_ctlcluster, redis-server, start-stop-daemon); elsewhere with a generic start into a per-user
state dir (SITQ_TEST_STATE_DIR, default ~/.cache/sitq-test-services).

Exit status: 0 when every service is reachable. A missing service is a failure (exit 1) when the
CI environment variable is set, because the test suite fails the tests that need it in CI; outside
CI those tests are skipped, so this script only warns and exits 0.

Stdlib only: this runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import ipaddress
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_POSTGRES_DSN = "postgresql://root@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

DEFAULT_PORTS = {"postgres": 5432, "redis": 6379, "nats": 4222}
CONNECT_TIMEOUT = 1.0
START_TIMEOUT = 20.0

INSTALL_HINTS = {
    "postgres": "install PostgreSQL: 'apt-get install postgresql' (Debian/Ubuntu), "
    "'brew install postgresql' (macOS), 'dnf install postgresql-server' (Fedora)",
    "redis": "install Redis: 'apt-get install redis-server' (Debian/Ubuntu), "
    "'brew install redis' (macOS), 'dnf install redis' (Fedora)",
    "nats": "install the NATS server: 'apt-get install nats-server' (Debian/Ubuntu), "
    "'brew install nats-server' (macOS), or put a nats-server binary on PATH",
}

# Where PostgreSQL's server programs live when they are not on PATH.
PG_BIN_GLOBS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # PGDG RPMs
    "/opt/homebrew/opt/postgresql*/bin",  # Homebrew on Apple silicon
    "/usr/local/opt/postgresql*/bin",  # Homebrew on Intel
    "/Applications/Postgres.app/Contents/Versions/*/bin",
)


# --------------------------------------------------------------------------- small helpers


def env_url(name: str, default: str) -> str:
    return os.environ.get(name) or default


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(url: str, default_port: int) -> Address:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    return Address(host, port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_address(addr: Address) -> str:
    """The address a server we start listens on: the URL's own loopback address."""
    return "127.0.0.1" if addr.host == "localhost" else addr.host


def debian_default(addr: Address, name: str) -> bool:
    """Whether the Debian service commands (fixed address and port) serve this address."""
    return addr.host in ("127.0.0.1", "localhost") and addr.port == DEFAULT_PORTS[name]


def tcp_connect(addr: Address, timeout: float = CONNECT_TIMEOUT) -> socket.socket | None:
    try:
        return socket.create_connection((addr.host, addr.port), timeout=timeout)
    except OSError:
        return None


def port_open(addr: Address, timeout: float = CONNECT_TIMEOUT) -> bool:
    sock = tcp_connect(addr, timeout)
    if sock is None:
        return False
    sock.close()
    return True


def wait_until(condition: Callable[[], bool], timeout: float = START_TIMEOUT) -> bool:
    """Poll condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def which(name: str) -> str | None:
    return shutil.which(name)


@dataclass
class CmdResult:
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 5) -> str:
        text = " | ".join(line.strip() for line in self.output.strip().splitlines()[-lines:])
        return text or f"exit code {self.returncode}"


def run(
    cmd: Sequence[str], *, timeout: float = 60.0, env: dict[str, str] | None = None
) -> CmdResult:
    """Run a command, collecting its output in a file rather than a pipe.

    A daemon that inherits the output would otherwise keep a pipe open and make us wait for it.
    """
    with tempfile.TemporaryFile(mode="w+b") as out:
        try:
            proc = subprocess.run(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env=env,
                check=False,
            )
            code = proc.returncode
        except FileNotFoundError as exc:
            return CmdResult(127, str(exc))
        except subprocess.TimeoutExpired:
            code = 124
        out.seek(0)
        text = out.read().decode(errors="replace")
    if code == 124 and not text:
        text = f"timed out after {timeout:.0f}s"
    return CmdResult(code, text)


def quote(cmd: Sequence[str]) -> str:
    return shlex.join(cmd)


def state_dir() -> Path:
    configured = os.environ.get("SITQ_TEST_STATE_DIR")
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "sitq-test-services"


def is_debian() -> bool:
    return Path("/etc/debian_version").exists()


def is_root() -> bool:
    return os.geteuid() == 0


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_exit(pid: int, timeout: float) -> bool:
    return wait_until(lambda: not process_alive(pid), timeout)


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmdline_mentions(pid: int, word: str) -> bool:
    """Whether the process's command line names word (True where /proc cannot tell)."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not Path("/proc/self/cmdline").exists():
        return True
    try:
        return word in cmdline.read_bytes().decode(errors="replace")
    except OSError:
        return False


# --------------------------------------------------------------------------- reporting


@dataclass
class Outcome:
    name: str
    ok: bool
    message: str
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        state = "ok" if self.ok else "MISSING"
        return (
            f"{self.name}: {state} ({self.message})"
            if self.ok
            else f"{self.name}: {state}: {self.message}"
        )


# A start attempt: a description of what it runs, and a callable that runs it and returns
# None on success or a short reason on failure.
Attempt = tuple[str, Callable[[], str | None]]


def ensure_service(
    name: str,
    addr: Address,
    *,
    check_only: bool,
    is_up: Callable[[], bool],
    attempts: Callable[[], list[Attempt]],
    installed: Callable[[], bool],
    no_way: str = "no way to start it was found",
) -> Outcome:
    if is_up():
        return Outcome(name, True, f"already running at {addr}")
    where = f"not reachable at {addr}"
    if check_only:
        return Outcome(name, False, f"{where} (--check: not starting anything)")
    if not is_loopback(addr.host):
        return Outcome(name, False, f"{where}; not a loopback address, so nothing was started")
    if not installed():
        return Outcome(name, False, f"{where} and no server is installed; {INSTALL_HINTS[name]}")
    tried: list[str] = []
    for description, start in attempts():
        try:
            reason = start()
        except OSError as exc:
            reason = str(exc)
        if reason is None and wait_until(is_up):
            return Outcome(name, True, f"started with {description}")
        if reason is None:
            reason = f"port {addr.port} not open after {START_TIMEOUT:.0f}s"
        tried.append(f"tried `{description}`: {reason}")
    if not tried:
        tried.append(no_way)
    return Outcome(name, False, f"{where}; {'; '.join(tried)}")


# --------------------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class PgTarget:
    dsn: str
    addr: Address
    user: str
    password: str | None
    database: str

    @classmethod
    def from_dsn(cls, dsn: str) -> PgTarget:
        parts = urlsplit(dsn)
        addr = parse_address(dsn, DEFAULT_PORTS["postgres"])
        user = unquote(parts.username) if parts.username else pwd.getpwuid(os.geteuid()).pw_name
        password = unquote(parts.password) if parts.password else None
        database = unquote(parts.path.lstrip("/")) or user
        return cls(dsn, addr, user, password, database)


def pg_tool(name: str) -> str | None:
    """A PostgreSQL program: from PATH, else from the usual install dirs (newest version)."""
    found = which(name)
    if found:
        return found
    candidates = [Path(bindir) / name for pattern in PG_BIN_GLOBS for bindir in glob.glob(pattern)]
    candidates = [c for c in candidates if os.access(c, os.X_OK)]
    return str(max(candidates, key=_version_key)) if candidates else None


def _version_key(path: Path) -> tuple[int, ...]:
    digits = "".join(ch if ch.isdigit() else " " for ch in str(path))
    return tuple(int(d) for d in digits.split())


def pg_env(target: PgTarget) -> dict[str, str]:
    env = dict(os.environ)
    env["PGCONNECT_TIMEOUT"] = "5"
    if target.password is not None:
        env["PGPASSWORD"] = target.password
    return env


def pg_server_user() -> pwd.struct_passwd | None:
    """PostgreSQL refuses to run as root: as root, run the server as the 'postgres' user."""
    if not is_root():
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def as_user(user: pwd.struct_passwd, cmd: Sequence[str]) -> list[str]:
    if user.pw_uid == os.geteuid():
        return list(cmd)
    runuser = which("runuser")
    if runuser:
        return [runuser, "-u", user.pw_name, "--", *cmd]
    return ["su", user.pw_name, "-s", "/bin/sh", "-c", quote(cmd)]


def debian_pg_cluster_version() -> str | None:
    """The newest Debian cluster version with a 'main' cluster, as in `ls /etc/postgresql`."""
    base = Path("/etc/postgresql")
    if not base.is_dir():
        return None
    versions = [p.name for p in base.iterdir() if (p / "main").is_dir()]
    return max(versions, key=lambda v: _version_key(Path(v))) if versions else None


def pg_debian_attempt(target: PgTarget) -> Attempt | None:
    ctl = which("pg_ctlcluster")
    version = debian_pg_cluster_version()
    if not (
        is_debian() and is_root() and ctl and version and debian_default(target.addr, "postgres")
    ):
        return None
    cmd = [ctl, "--skip-systemctl-redirect", version, "main", "start"]

    def start() -> str | None:
        result = run(cmd, timeout=START_TIMEOUT + 10)
        # Exit code 2 from pg_ctlcluster means "already running".
        return None if result.returncode in (0, 2) else result.tail()

    return quote(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"]), start


def pg_generic_data_dir(target: PgTarget, user: pwd.struct_passwd) -> Path:
    if user.pw_uid == os.geteuid():
        return state_dir() / f"postgres-{target.addr.port}"
    # Running the server as another user (root -> postgres): our home is usually private to us,
    # so keep its data dir where that user can reach it.
    return (
        Path(tempfile.gettempdir())
        / f"sitq-test-services-{user.pw_name}"
        / (f"postgres-{target.addr.port}")
    )


def pg_generic_attempt(target: PgTarget) -> Attempt | None:
    pg_ctl = pg_tool("pg_ctl")
    initdb = pg_tool("initdb")
    user = pg_server_user()
    if not (pg_ctl and initdb and user):
        return None
    data = pg_generic_data_dir(target, user)
    logfile = data.parent / f"postgres-{target.addr.port}.log"
    start_cmd = as_user(user, [pg_ctl, "-D", str(data), "-l", str(logfile), "-w", "-t", "20"])
    start_cmd.append("start")

    def start() -> str | None:
        if not (data / "PG_VERSION").exists():
            reason = pg_initdb(target, user, initdb, data)
            if reason:
                return reason
        result = run(start_cmd, timeout=START_TIMEOUT + 10)
        if not result.ok:
            return f"{result.tail()} (log: {logfile})"
        return None

    description = f"pg_ctl -D {data} start (log: {logfile})"
    return description, start


def pg_initdb(target: PgTarget, user: pwd.struct_passwd, initdb: str, data: Path) -> str | None:
    data.parent.mkdir(parents=True, exist_ok=True)
    if user.pw_uid != os.geteuid():
        os.chown(data.parent, user.pw_uid, user.pw_gid)
    cmd = [
        initdb,
        "-D",
        str(data),
        "-U",
        target.user,  # the DSN's user is the superuser, so no role needs creating
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-locale",
        "--no-sync",
    ]
    result = run(as_user(user, cmd), timeout=120)
    if not result.ok:
        return f"initdb failed: {result.tail()}"
    settings = (
        "\n# Added by sitq's scripts/services.py: a throwaway server for the tests.\n"
        f"listen_addresses = '{bind_address(target.addr)}'\n"
        f"port = {target.addr.port}\n"
        f"unix_socket_directories = '{data}'\n"
        "fsync = off\n"
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(settings)
    return None


def pg_database_problem(target: PgTarget) -> str | None:
    """None if the DSN's database answers; else what is wrong. Needs psql (else assumes ok)."""
    psql = pg_tool("psql")
    if not psql:
        return None
    result = run([psql, target.dsn, "-XAtqc", "select 1"], timeout=15, env=pg_env(target))
    return None if result.ok else result.tail(2)


def pg_admin_commands(target: PgTarget, tool: str, args: Sequence[str]) -> list[list[str]]:
    """Ways to run a PostgreSQL client tool with enough rights, best first.

    Over TCP as the DSN's user, as 'postgres' and as our OS user (the usual superusers, with trust
    auth); and, as root, as the 'postgres' OS user over the local socket (peer auth, as Debian sets
    it up).
    """
    host = bind_address(target.addr) if target.addr.host == "localhost" else target.addr.host
    conn = ["-h", host, "-p", str(target.addr.port)]
    os_user = pwd.getpwuid(os.geteuid()).pw_name
    users = dict.fromkeys([target.user, "postgres", os_user])  # ordered, without repeats
    commands = [[tool, *conn, "-U", user, *args] for user in users]
    server_user = pg_server_user()
    if is_root() and server_user and server_user.pw_uid != 0 and is_loopback(target.addr.host):
        commands.append(as_user(server_user, [tool, "-p", str(target.addr.port), *args]))
    return commands


def pg_run_first(commands: list[list[str]], env: dict[str, str]) -> CmdResult:
    result = CmdResult(1, "nothing to run")
    for cmd in commands:
        result = run(cmd, timeout=30, env=env)
        if result.ok:
            break
    return result


def pg_fix_database(target: PgTarget, problem: str) -> tuple[str | None, list[str]]:
    """Create the DSN's role and database if they are missing.

    Returns what is still wrong (None if nothing) and what was done.
    """
    done: list[str] = []
    env = pg_env(target)
    if f'role "{target.user}" does not exist' in problem:
        createuser = pg_tool("createuser")
        if not createuser:
            return f"{problem}; createuser not found", done
        # The DSN's own user does not exist yet, so skip the first way.
        ways = pg_admin_commands(target, createuser, ["-s", target.user])[1:]
        result = pg_run_first(ways, env)
        if not result.ok:
            return f"{problem}; could not create role {target.user!r}: {result.tail()}", done
        done.append(f"created role {target.user!r}")
        problem = pg_database_problem(target) or ""
        if not problem:
            return None, done
    if f'database "{target.database}" does not exist' in problem:
        createdb = pg_tool("createdb")
        if not createdb:
            return f"{problem}; createdb not found", done
        ways = pg_admin_commands(target, createdb, ["-O", target.user, target.database])
        result = pg_run_first(ways, env)
        if not result.ok:
            return f"{problem}; createdb {target.database} failed: {result.tail()}", done
        done.append(f"created database {target.database!r}")
        return pg_database_problem(target), done
    return problem or None, done


def pg_installed() -> bool:
    return bool(which("pg_ctlcluster") or pg_tool("pg_ctl") or pg_tool("postgres"))


def check_postgres(check_only: bool) -> Outcome:
    target = PgTarget.from_dsn(env_url("SITQ_TEST_POSTGRES_DSN", DEFAULT_POSTGRES_DSN))

    def attempts() -> list[Attempt]:
        found = [pg_debian_attempt(target), pg_generic_attempt(target)]
        return [a for a in found if a is not None]

    outcome = ensure_service(
        "postgres",
        target.addr,
        check_only=check_only,
        is_up=lambda: port_open(target.addr),
        attempts=attempts,
        installed=pg_installed,
        no_way=(
            "found neither pg_ctlcluster (used on Debian, as root, for the default port) nor "
            "pg_ctl and initdb (on PATH or under "
            + ", ".join(PG_BIN_GLOBS)
            + ")"
            + (
                ""
                if pg_server_user()
                else ", nor a 'postgres' user to run the server as "
                "(PostgreSQL refuses to run as root)"
            )
        ),
    )
    if not outcome.ok:
        return outcome
    # The server answers: check that the DSN's database exists and accepts us. A server that
    # was just started may still be starting up.
    problem = pg_database_problem(target)
    if problem and "starting up" in problem:
        wait_until(lambda: "starting up" not in (pg_database_problem(target) or ""), 10)
        problem = pg_database_problem(target)
    if problem is None:
        return outcome
    if check_only:
        return Outcome("postgres", False, f"server at {target.addr} is up, but: {problem}")
    still, done = pg_fix_database(target, problem)
    if still is not None:
        return Outcome("postgres", False, f"server at {target.addr} is up, but: {still}")
    outcome.message += "; " + ", ".join(done)
    return outcome


# --------------------------------------------------------------------------- Redis


def redis_debian_attempt(addr: Address) -> Attempt | None:
    server = which("redis-server")
    if not (
        server
        and is_debian()
        and is_root()
        and debian_default(addr, "redis")
        and Path("/var/lib/redis").is_dir()
        and Path("/var/log/redis").is_dir()
    ):
        return None
    cmd = [
        server,
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "-::1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        "/var/lib/redis",
        "--logfile",
        "/var/log/redis/ci.log",
    ]

    def start() -> str | None:
        result = run(cmd, timeout=30)
        return None if result.ok else result.tail()

    return quote(["redis-server", *cmd[1:]]), start


def redis_generic_attempt(addr: Address) -> Attempt | None:
    server = which("redis-server")
    if not server:
        return None
    state = state_dir()
    pidfile = state / f"redis-{addr.port}.pid"
    logfile = state / f"redis-{addr.port}.log"
    cmd = [
        server,
        "--daemonize",
        "yes",
        "--bind",
        bind_address(addr),
        "--port",
        str(addr.port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(state),
        "--pidfile",
        str(pidfile),
        "--logfile",
        str(logfile),
    ]

    def start() -> str | None:
        state.mkdir(parents=True, exist_ok=True)
        result = run(cmd, timeout=30)
        return None if result.ok else f"{result.tail()} (log: {logfile})"

    return quote(["redis-server", *cmd[1:]]), start


def check_redis(check_only: bool) -> Outcome:
    addr = parse_address(env_url("SITQ_TEST_REDIS_URL", DEFAULT_REDIS_URL), DEFAULT_PORTS["redis"])

    def attempts() -> list[Attempt]:
        found = [redis_debian_attempt(addr), redis_generic_attempt(addr)]
        return [a for a in found if a is not None]

    return ensure_service(
        "redis",
        addr,
        check_only=check_only,
        is_up=lambda: port_open(addr),
        attempts=attempts,
        installed=lambda: which("redis-server") is not None,
    )


# --------------------------------------------------------------------------- NATS


def nats_info(addr: Address) -> dict[str, object] | None:
    """The server's INFO message (sent on connect), or None if nothing NATS-like answers."""
    sock = tcp_connect(addr)
    if sock is None:
        return None
    with sock:
        data = b""
        try:
            while b"\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("INFO "):
        return {}
    try:
        info = json.loads(line[5:])
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def nats_server_binary() -> str | None:
    return which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None
    )


def nats_debian_attempt(addr: Address) -> Attempt | None:
    ssd = which("start-stop-daemon")
    if not (
        ssd
        and is_debian()
        and is_root()
        and debian_default(addr, "nats")
        and os.access("/usr/sbin/nats-server", os.X_OK)
    ):
        return None
    cmd = [
        ssd,
        "--start",
        "--oknodo",
        "--background",
        "--exec",
        "/usr/sbin/nats-server",
        "--",
        "-a",
        "127.0.0.1",
        "-p",
        "4222",
        "-js",
        "-sd",
        "/var/lib/nats-server",
        "-l",
        "/var/log/nats-server.log",
    ]

    def start() -> str | None:
        Path("/var/lib/nats-server").mkdir(parents=True, exist_ok=True)
        result = run(cmd, timeout=30)
        return None if result.ok else f"{result.tail()} (log: /var/log/nats-server.log)"

    return quote(["start-stop-daemon", *cmd[1:]]), start


def nats_generic_attempt(addr: Address) -> Attempt | None:
    server = nats_server_binary()
    if not server:
        return None
    state = state_dir()
    store = state / f"nats-{addr.port}"
    logfile = state / f"nats-{addr.port}.log"
    pidfile = state / f"nats-{addr.port}.pid"
    cmd = [
        server,
        "-a",
        bind_address(addr),
        "-p",
        str(addr.port),
        "-js",
        "-sd",
        str(store),
        "-P",
        str(pidfile),
    ]

    def start() -> str | None:
        store.mkdir(parents=True, exist_ok=True)
        with logfile.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Fail fast if it exits at once (bad flag, port taken, ...).
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = proc.wait(timeout=0.5)
            return f"exited with code {code} (log: {logfile})"
        return None

    return f"{quote(['nats-server', *cmd[1:]])} (detached, log: {logfile})", start


def check_nats(check_only: bool) -> Outcome:
    addr = parse_address(env_url("SITQ_TEST_NATS_URL", DEFAULT_NATS_URL), DEFAULT_PORTS["nats"])

    def attempts() -> list[Attempt]:
        found = [nats_debian_attempt(addr), nats_generic_attempt(addr)]
        return [a for a in found if a is not None]

    outcome = ensure_service(
        "nats",
        addr,
        check_only=check_only,
        is_up=lambda: nats_info(addr) is not None,
        attempts=attempts,
        installed=lambda: nats_server_binary() is not None,
    )
    if outcome.ok:
        info = nats_info(addr)
        if not info:
            outcome.warnings.append(
                f"the server at {addr} did not send a NATS INFO line; is it really NATS?"
            )
        elif info.get("jetstream") is not True:
            outcome.warnings.append(
                f"JetStream is not enabled on the NATS server at {addr}; the NATS backend's "
                "tests need it (start nats-server with -js)"
            )
    return outcome


# --------------------------------------------------------------------------- --stop


def stop_started() -> list[str]:
    """Stop the servers this script started in its own state dir (the generic path)."""
    lines: list[str] = []
    dirs = [state_dir()]
    server_user = pg_server_user()
    if server_user and server_user.pw_uid != os.geteuid():
        dirs.append(Path(tempfile.gettempdir()) / f"sitq-test-services-{server_user.pw_name}")
    pg_ctl = pg_tool("pg_ctl")
    for base in dirs:
        for data in sorted(base.glob("postgres-*")):
            if not (data / "postmaster.pid").exists() or not pg_ctl or not server_user:
                continue
            result = run(
                as_user(server_user, [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
                timeout=60,
            )
            lines.append(
                f"postgres: stopped ({data})"
                if result.ok
                else f"postgres: could not stop {data}: {result.tail()}"
            )
    base = state_dir()
    for kind, word in (("redis", "redis-server"), ("nats", "nats-server")):
        for pidfile in sorted(base.glob(f"{kind}-*.pid")):
            pid = read_pid(pidfile)
            if pid is None or not process_alive(pid) or not cmdline_mentions(pid, word):
                pidfile.unlink(missing_ok=True)
                continue
            os.kill(pid, signal.SIGTERM)
            stopped = wait_for_exit(pid, 10)
            if stopped:
                pidfile.unlink(missing_ok=True)
            lines.append(
                f"{kind}: stopped pid {pid}" if stopped else f"{kind}: pid {pid} did not stop"
            )
    return lines or ["nothing to stop (no servers started by this script are running)"]


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make sure PostgreSQL, Redis and NATS (JetStream) are up for sitq's tests.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only report; never start anything")
    mode.add_argument(
        "--stop",
        action="store_true",
        help="stop the servers this script started in its state dir (never system services)",
    )
    args = parser.parse_args(argv)

    if args.stop:
        for line in stop_started():
            print(line)
        return 0

    outcomes = [check(args.check) for check in (check_postgres, check_redis, check_nats)]
    for outcome in outcomes:
        print(outcome.line(), flush=True)
        for warning in outcome.warnings:
            print(f"{outcome.name}: WARNING: {warning}", flush=True)

    missing = [o.name for o in outcomes if not o.ok]
    if not missing:
        return 0
    names = ", ".join(missing)
    if in_ci():
        print(
            f"services: FAILED: {names} not available. CI is set, and in CI a missing service "
            "is a failure (the tests that need it fail instead of being skipped).",
            flush=True,
        )
        return 1
    them = "it" if len(missing) == 1 else "them"
    hint = (
        f"run `python scripts/services.py` without --check to start {them}"
        if args.check
        else f"install {them} as shown above, then run `python scripts/services.py` again"
    )
    print(
        f"services: {names} not available; the tests that need {them} will be skipped "
        f"(with CI set they would fail instead). To fix: {hint}.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
