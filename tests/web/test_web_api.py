"""The dashboard's JSON API and pages, served by a real ``sitq web`` process, on every backend
that processes share: every endpoint, with a task in each state made by a real worker process,
and a payload that would run code if anything unpickled it."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

from sitq import TaskQueue
from sitq.models import TaskInfo, WorkerInfo
from tests.conformance import tasks
from tests.conftest import BackendFactory, WorkerProcesses, wait_until
from tests.services import require_module
from tests.web import tasks as web_tasks
from tests.web.server import Processes, WebServer

require_module("starlette")

TASK_FIELDS = {f.name for f in fields(TaskInfo)}
WORKER_FIELDS = {f.name for f in fields(WorkerInfo)}
COUNT_FIELDS = {"queue", "pending", "scheduled", "running", "succeeded", "failed", "cancelled"}


def task_path(task_id: str) -> str:
    return "/api/tasks/" + quote(task_id, safe="")


def counts_of(server: WebServer, queue: str) -> dict[str, int] | None:
    reply = server.get("/api/queues")
    assert reply.status == 200, reply.text
    found = [q for q in reply.json() if q["queue"] == queue]
    return found[0] if found else None


def assert_iso(value: str | None) -> None:
    if value is not None:
        assert datetime.fromisoformat(value).tzinfo is not None, value


async def test_every_endpoint_on_every_backend(
    shared_backends: BackendFactory,
    worker_processes: WorkerProcesses,
    processes: Processes,
    tmp_path: Path,
) -> None:
    url = shared_backends.url
    assert url is not None
    release = tmp_path / "release"
    marker = tmp_path / "unpickled"
    queue = TaskQueue(shared_backends.make())
    await queue.connect()
    try:
        web = queue.options(queue="web")
        later = datetime.now(UTC) + timedelta(hours=1)
        ids = {
            "success": await web.enqueue(tasks.add, 1, 2),
            "failed": await web.enqueue(tasks.fail, "broken on purpose"),
            "running": await web.enqueue(
                web_tasks.report_then_wait, 0.4, "resized 40 of 100 images", str(release)
            ),
            "pending": await web.enqueue_at(later, tasks.add, 3, 4),
            "cancelled": await web.enqueue_at(later, tasks.add, 5, 6),
        }
        assert await queue.cancel(ids["cancelled"])
        # On a queue no worker serves: requeueing it must not lead anything to unpickle it.
        hostile = await queue.options(queue="hostile").enqueue_in(
            3600, tasks.add, tasks.RunsCodeWhenUnpickled(str(marker)), 1
        )
        assert await queue.cancel(hostile)

        # A lease of 3 s: the worker saves the running task's progress at its heartbeat, every
        # second (every 2 s under the default lease).
        worker = worker_processes.start(
            url, lease=3.0, queues=("web",), extra=("--import", "tests.web.tasks")
        )
        # The server starts up while the worker does: nothing below asks it anything before
        # every task has reached the state it is counted in.
        server = processes.web(url)
        assert await queue.get_result(ids["success"], timeout=60) is not None
        assert await queue.get_result(ids["failed"], timeout=60) is not None

        async def progress_reported() -> bool:
            info = await queue.get_task(ids["running"])
            return info is not None and info.progress == 0.4

        await wait_until(progress_reported, timeout=60, message="the running task's progress")

        # -- GET /api/queues: the counts of `sitq info`, per queue ----------------------------
        expected = {
            "queue": "web",
            "pending": 0,
            "scheduled": 1,
            "running": 1,
            "succeeded": 1,
            "failed": 1,
            "cancelled": 1,
        }
        await wait_until(lambda: counts_of(server, "web") == expected, message="the counts")
        listed = server.get("/api/queues").json()
        assert all(set(q) == COUNT_FIELDS for q in listed)
        assert {q["queue"] for q in listed} >= {"web", "hostile"}

        # -- GET /api/tasks: fields of §3.1, group order, filters, paging ------------------------
        page = server.get("/api/tasks?queue=web").json()
        assert set(page) == {"tasks", "next_cursor"} and page["next_cursor"] is None
        assert [t["status"] for t in page["tasks"]] == [
            "running",
            "pending",
            "failed",
            "cancelled",
            "success",
        ]
        assert [t["task_id"] for t in page["tasks"]] == [
            ids[s] for s in ("running", "pending", "failed", "cancelled", "success")
        ]
        for item in page["tasks"]:
            assert set(item) == TASK_FIELDS
            for key in ("enqueued_at", "eta", "started_at", "finished_at"):
                assert_iso(item[key])
        running = page["tasks"][0]
        assert running["progress"] == 0.4
        assert running["progress_message"] == "resized 40 of 100 images"
        assert running["function"] == "tests.web.tasks.report_then_wait"
        failed = server.get("/api/tasks?status=failed&queue=web").json()["tasks"]
        assert [t["task_id"] for t in failed] == [ids["failed"]]
        assert failed[0]["error"] == "ValueError: broken on purpose"
        assert "Traceback" in failed[0]["traceback"]
        several = server.get("/api/tasks?status=success&status=pending&queue=web").json()
        assert [t["status"] for t in several["tasks"]] == ["pending", "success"]
        comma = server.get("/api/tasks?status=success,pending&queue=web").json()
        assert comma["tasks"] == several["tasks"]

        seen: list[str] = []
        cursor = None
        while True:
            path = "/api/tasks?queue=web&limit=2" + (f"&cursor={quote(cursor)}" if cursor else "")
            chunk = server.get(path).json()
            assert len(chunk["tasks"]) <= 2
            seen += [t["task_id"] for t in chunk["tasks"]]
            cursor = chunk["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids.values()) and len(seen) == len(set(seen))

        # -- bad parameters: 400 naming the parameter and what it takes --------------------
        for query, parameter in [
            ("status=done", "status"),
            ("limit=0", "limit"),
            ("limit=1001", "limit"),
            ("limit=many", "limit"),
            ("cursor=not-a-cursor", "cursor"),
            ("queue=no%20spaces", "queue"),
            ("stauts=failed", "stauts"),
        ]:
            bad = server.get(f"/api/tasks?{query}")
            assert bad.status == 400, (query, bad.text)
            assert bad.json()["parameter"] == parameter, query
        status_error = server.get("/api/tasks?status=done").json()
        assert status_error["valid"] == ["running", "pending", "failed", "cancelled", "success"]
        assert "running, pending, failed, cancelled, success" in status_error["error"]

        # -- GET /api/tasks/{id} ------------------------------------------------------------
        for state, task_id in ids.items():
            one = server.get(task_path(task_id))
            assert one.status == 200
            assert one.json()["status"] == state and set(one.json()) == TASK_FIELDS
        unknown = server.get(task_path("no-such-task"))
        assert unknown.status == 404 and "no-such-task" in unknown.json()["error"]

        # -- GET /api/workers -----------------------------------------------------------------
        def worker_listed() -> bool:
            return any(w["pid"] == worker.pid for w in server.get("/api/workers").json())

        await wait_until(worker_listed, message="the worker in /api/workers")
        (mine,) = [w for w in server.get("/api/workers").json() if w["pid"] == worker.pid]
        assert set(mine) == WORKER_FIELDS and mine["queues"] == ["web"]
        overview = server.get("/api/overview").json()
        assert set(overview) == {"queues", "workers", "throughput", "counted_at", "max_age"}
        assert [w["window"] for w in overview["throughput"]["windows"]] == [60, 300, 900]

        # -- /metrics ---------------------------------------------------------------------------
        metrics = server.get("/metrics")
        assert metrics.status == 200, metrics.text
        assert 'sitq_queue_tasks{queue="web",state="succeeded"} 1.0' in metrics.text
        assert 'sitq_queue_tasks{queue="web",state="scheduled"} 1.0' in metrics.text

        # -- the pages show the same tasks ----------------------------------------------------
        home = server.get("/")
        assert home.status == 200 and 'data-count="web:failed"' in home.text
        assert f'data-worker-id="{mine["worker_id"]}"' in home.text
        listing = server.get("/tasks?queue=web")
        assert listing.status == 200
        assert all(f'data-task-id="{task_id}"' in listing.text for task_id in ids.values())
        for task_id in ids.values():
            shown = server.get("/tasks/" + quote(task_id, safe=""))
            assert shown.status == 200 and f'<code id="task-id">{task_id}</code>' in shown.text
        running_page = server.get("/tasks/" + ids["running"]).text
        assert 'data-progress="0.4"' in running_page and "resized 40 of 100 images" in running_page
        assert 'id="traceback"' in server.get("/tasks/" + ids["failed"]).text

        # -- POST actions ------------------------------------------------------------------------
        requeued = server.post(task_path(ids["failed"]) + "/requeue")
        assert requeued.status == 200 and requeued.json()["requeued"] is True
        refused = server.post(task_path(ids["success"]) + "/requeue")
        assert refused.status == 409
        assert refused.json()["requeued"] is False and refused.json()["status"] == "success"
        assert server.post(task_path("no-such-task") + "/requeue").status == 404

        cancelled = server.post(task_path(ids["pending"]) + "/cancel")
        assert cancelled.status == 200, cancelled.text
        assert cancelled.json()["cancelled"] is True and cancelled.json()["status"] == "cancelled"
        finished = server.post(task_path(ids["success"]) + "/cancel")
        assert finished.status == 409 and finished.json()["cancelled"] is False
        assert server.post(task_path("no-such-task") + "/cancel").status == 404

        bad_purge = server.post("/api/queues/web/purge?status=running")
        assert bad_purge.status == 400 and bad_purge.json()["parameter"] == "status"
        assert bad_purge.json()["valid"] == [
            "pending",
            "failed",
            "cancelled",
            "success",
            "finished",
        ]
        assert server.post("/api/queues/web/purge").status == 400
        assert (
            server.post("/api/queues/no%20way/purge?status=failed").json()["parameter"] == "queue"
        )
        purged = server.post("/api/queues/web/purge?status=cancelled")
        assert purged.status == 200
        assert purged.json() == {"queue": "web", "status": "cancelled", "purged": 2}
        assert server.get(task_path(ids["cancelled"])).status == 404
        await wait_until(
            lambda: (counts_of(server, "web") or {}).get("cancelled") == 0,
            message="the purge in the counts",
        )

        # -- a payload that runs code if unpickled: listed, shown, requeued, never run -------
        hostile_listed = server.get("/api/tasks?queue=hostile").json()["tasks"]
        assert [t["task_id"] for t in hostile_listed] == [hostile]
        assert server.get(task_path(hostile)).json()["function"] == "tests.conformance.tasks.add"
        assert server.get("/tasks/" + hostile).status == 200
        assert server.get("/tasks?queue=hostile").status == 200
        back = server.post(task_path(hostile) + "/requeue")
        assert back.status == 200 and back.json()["requeued"] is True
        assert server.get(task_path(hostile)).json()["status"] == "pending"
        assert not marker.exists()

        release.touch()
        assert await queue.get_result(ids["running"], timeout=60) is not None
        assert worker_processes.stop(worker) == 0
    finally:
        release.touch()
        await queue.close()
    assert not marker.exists()
