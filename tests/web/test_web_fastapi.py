"""examples/fastapi_app.py run by uvicorn in a subprocess: the dashboard mounted under /sitq
serves its overview, a task, the API and its assets there, and its links, forms and scripts
point under the mount."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import quote

from tests.conftest import REPO
from tests.services import require_module
from tests.web.server import Client, Processes, wait_for_line

require_module("starlette")
require_module("fastapi")

RUNNING = re.compile(r"Uvicorn running on http://(?P<host>[\d.]+):(?P<port>\d+)")


def test_the_dashboard_mounted_in_fastapi(tmp_path: Path, processes: Processes) -> None:
    proc, log = processes.spawn(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "fastapi_app:app",
            "--app-dir",
            str(REPO / "examples"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ],
        env={"SITQ_URL": f"sqlite:///{tmp_path / 'app.db'}"},
    )
    found = wait_for_line(log, proc, RUNNING)
    app = Client(found["host"], int(found["port"]))

    signup = app.post("/signup?email=ada@example.com", headers={})
    assert signup.status == 202, signup.text
    task_id = signup.json()["task_id"]

    home = app.get("/sitq/")
    assert home.status == 200, home.text
    html = home.text
    assert 'data-root="/sitq"' in html
    assert 'href="/sitq/static/sitq.css"' in html and 'src="/sitq/static/sitq.js"' in html
    assert 'href="/sitq/tasks"' in html and 'data-count="default:pending"' in html
    assert 'action="/sitq/queues/default/requeue"' in html
    # No link leaves the mount (every href and action is under /sitq).
    for link in re.findall(r'(?:href|src|action)="(/[^"]*)"', html):
        assert link.startswith("/sitq/"), link

    assert app.get("/sitq/static/sitq.js").status == 200
    assert app.get("/sitq/static/sitq.css").status == 200
    queues = app.get("/sitq/api/queues")
    assert queues.status == 200 and queues.json()[0]["queue"] == "default"
    one = app.get(f"/sitq/api/tasks/{quote(task_id)}")
    assert one.status == 200 and one.json()["function"] == "fastapi_app.send_welcome"
    page = app.get(f"/sitq/tasks/{quote(task_id)}")
    assert page.status == 200 and f'action="/sitq/tasks/{task_id}/cancel"' in page.text

    # A form posted from the mounted page acts, and its redirect stays under the mount.
    cancelled = app.post(f"/sitq/tasks/{task_id}/cancel")
    assert cancelled.status == 303
    assert cancelled.header("Location") == f"/sitq/tasks/{task_id}?done=cancelled"
    assert app.get(f"/sitq/api/tasks/{task_id}").json()["status"] == "cancelled"
    assert (
        app.post(f"/sitq/tasks/{task_id}/requeue", headers={"Origin": "http://evil.example"}).status
        == 403
    )
