"""``sitq web`` as a command: it stops cleanly on SIGTERM and SIGINT, and refuses a bad port."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sitq import TaskQueue
from tests.conftest import REPO
from tests.services import require_module
from tests.web.server import Processes

require_module("starlette")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_stops_it_with_status_0(
    tmp_path: Path, processes: Processes, sig: signal.Signals
) -> None:
    url = f"sqlite:///{tmp_path / 'stop.db'}"
    async with TaskQueue(url):
        pass
    server = processes.web(url)
    assert server.get("/api/queues").status == 200
    server.proc.send_signal(sig)
    assert server.proc.wait(timeout=60) == 0, server.output()


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_bad_port_is_a_usage_error(tmp_path: Path, port: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sitq", "web", f"sqlite:///{tmp_path / 'x.db'}", "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"sitq: --port must be from 0 to 65535, not {port}"
