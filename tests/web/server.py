"""``sitq web`` subprocesses for the dashboard tests, and a small HTTP client for them.

Each server is started on port 0 (the kernel picks a free one) and found from the line it prints
once it listens; every process started here is killed (with its group) at teardown.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import REPO

ANNOUNCE = re.compile(r"sitq web: .* at http://(?P<host>[^\s/]+):(?P<port>\d+)/")


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class Client:
    """Plain HTTP/1.1 requests to one address: no redirect followed, no cookie kept, every
    header as given (a test sets ``Origin``, ``Host`` and ``Cookie`` itself)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if form is not None:
            body = urlencode(form).encode()
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        sent.setdefault("Connection", "close")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        """A POST as a browser on the dashboard's own page sends it (same ``Origin``), unless
        the caller gives headers of its own."""
        headers = dict(kwargs.pop("headers", None) or {"Origin": self.origin})
        return self.request("POST", path, headers=headers, **kwargs)


class WebServer(Client):
    """A running ``sitq web``."""

    proc: subprocess.Popen[bytes]
    log: Path

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, host: str, port: int) -> None:
        super().__init__(host, port)
        self.proc = proc
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for_line(
    log: Path, proc: subprocess.Popen[bytes], pattern: re.Pattern[str]
) -> re.Match[str]:
    """The first match of ``pattern`` in the process's log; fails if the process exits or 60 s
    pass first."""
    deadline = time.monotonic() + 60
    while True:
        text = log.read_text(errors="replace") if log.exists() else ""
        found = pattern.search(text)
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the process exited with {proc.returncode} before listening:\n{text}")
        if time.monotonic() > deadline:
            pytest.fail(f"the process did not listen within 60 s:\n{text}")
        time.sleep(0.02)


class Processes:
    """Starts subprocesses that log to files and kills what is left at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        full_env = dict(os.environ)
        full_env.pop("SITQ_WEB_TOKEN", None)
        full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
        full_env.update(env or {})
        log = self.tmp_path / f"web-{len(self.procs)}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                list(args),
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.tmp_path,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc, log

    def web(
        self,
        url: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        blocked: Sequence[str] = (),
    ) -> WebServer:
        """``sitq web URL --port 0 *args``; ``blocked`` names modules made unimportable in it
        (as if their package were not installed)."""
        if blocked:
            code = (
                "import sys\n"
                f"for name in {list(blocked)!r}:\n"
                "    sys.modules[name] = None\n"
                "from sitq.cli import main\n"
                "sys.exit(main())\n"
            )
            command = [sys.executable, "-c", code]
        else:
            command = [sys.executable, "-m", "sitq"]
        proc, log = self.spawn([*command, "web", url, "--port", "0", *args], env=env)
        found = wait_for_line(log, proc, ANNOUNCE)
        return WebServer(proc, log, found["host"], int(found["port"]))

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """``sitq web`` (and other) subprocesses of one test, all killed afterwards."""
    started = Processes(tmp_path)
    yield started
    started.kill_all()


def sitq_info(url: str) -> dict[str, dict[str, int]]:
    """The counts ``sitq info URL`` prints: queue -> state -> count, read from its table."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "sitq", "info", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[:1] == ["queue"])
    header = lines[at].split()
    counts: dict[str, dict[str, int]] = {}
    for line in lines[at + 1 :]:
        if not line.strip():
            break
        queue, *values = line.split()
        assert len(values) == len(header) - 1, line
        counts[queue] = {state: int(v) for state, v in zip(header[1:], values, strict=True)}
    return counts
