"""examples/flask_app.py through Flask's test client, with a real worker running the task its
view enqueues (SQLite)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tests.frameworks.conftest import start_worker
from tests.services import require_module
from tests.web.server import Processes

require_module("flask")


def test_the_flask_example_enqueues_and_reports_status(
    tmp_path: Path, examples: Path, processes: Processes
) -> None:
    flask_app: Any = importlib.import_module("flask_app")
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    app = flask_app.create_app(url)
    client = app.test_client()
    try:
        made = client.post("/thumbnails", data={"path": "cat.png", "width": "64"})
        assert made.status_code == 202, made.text
        task_id = made.json["task_id"]
        assert client.get(f"/tasks/{task_id}").json == {"task_id": task_id, "status": "pending"}
        assert client.get("/tasks/no-such-task").status_code == 404

        start_worker(processes, url, "flask_app")
        queue = app.extensions["sitq"]
        assert queue.get_value(task_id, timeout=30) == "cat.png resized to 64 px wide"
        assert client.get(f"/tasks/{task_id}").json == {"task_id": task_id, "status": "success"}
    finally:
        if "sitq" in app.extensions:
            app.extensions["sitq"].close()
