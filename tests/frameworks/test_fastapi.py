"""examples/fastapi_app.py through its ASGI interface (Starlette's TestClient, which runs the
lifespan), on SQLite and PostgreSQL, with a real worker running the task it enqueues."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from sitq import SyncTaskQueue, TaskQueue
from tests.frameworks.conftest import start_worker
from tests.services import require_module
from tests.web.server import Processes

require_module("fastapi")
require_module("httpx2")  # Starlette's TestClient is built on it

from fastapi import Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402


def test_the_fastapi_example_enqueues_and_reports_status(
    url: str, examples: Path, processes: Processes
) -> None:
    fastapi_app: Any = importlib.import_module("fastapi_app")
    app = fastapi_app.create_app(url)
    seen: list[TaskQueue] = []

    def spy(request: Request) -> TaskQueue:
        queue: TaskQueue = fastapi_app.get_queue(request)
        seen.append(queue)
        return queue

    app.dependency_overrides[fastapi_app.get_queue] = spy
    with TestClient(app) as client:
        signup = client.post("/signup", params={"email": "ada@example.com"})
        assert signup.status_code == 202, signup.text
        task_id = signup.json()["task_id"]
        # The lifespan connected the queue the dependency hands out.
        assert seen and seen[0].backend.connected
        assert client.get(f"/tasks/{task_id}").json() == {"task_id": task_id, "status": "pending"}
        assert client.get("/tasks/no-such-task").status_code == 404
        mounted = client.get(f"/sitq/api/tasks/{task_id}").json()
        assert (mounted["status"], mounted["function"]) == ("pending", "fastapi_app.send_welcome")
        assert 'data-root="/sitq"' in client.get("/sitq/").text

        start_worker(processes, url, "fastapi_app")
        with SyncTaskQueue(url) as queue:
            assert queue.get_value(task_id, timeout=30) == "welcome mail sent to ada@example.com"
        assert client.get(f"/tasks/{task_id}").json() == {"task_id": task_id, "status": "success"}
        assert client.get(f"/sitq/api/tasks/{task_id}").json()["status"] == "success"
    assert not seen[0].backend.connected, "the lifespan closed the queue"
