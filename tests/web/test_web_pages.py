"""The dashboard's pages and their actions, as a browser uses them (forms, redirects), against
a real ``sitq web`` on SQLite: overview, listings and paging, a task, cancel, requeue, requeue
all failed, purge with its confirmation, and task ids that need escaping in a URL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

from sitq import AsyncWorker, TaskQueue
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, wait_until
from tests.services import require_module
from tests.web.server import Processes, WebServer

require_module("starlette")


def follow(server: WebServer, reply_location: str | None) -> str:
    """The page a redirect leads to."""
    assert reply_location is not None
    parts = urlsplit(reply_location)
    page = server.get(parts.path + (f"?{parts.query}" if parts.query else ""))
    assert page.status == 200, page.text
    return page.text


def count_cell(html: str, key: str) -> int:
    found = re.search(rf'data-count="{re.escape(key)}"[^>]*>(\d+)<', html)
    assert found is not None, key
    return int(found.group(1))


async def test_pages_and_their_actions(
    tmp_path: Path, processes: Processes, worker_processes: WorkerProcesses
) -> None:
    url = f"sqlite:///{tmp_path / 'pages.db'}"
    later = datetime.now(UTC) + timedelta(hours=1)
    async with TaskQueue(url) as queue:
        q = queue.options(queue="q")
        failed = [await q.enqueue(tasks.fail, f"broken {n}") for n in range(3)]
        done = await q.enqueue(tasks.add, 1, 2)
        async with AsyncWorker(queue.backend, queues=["q"], poll_interval=0.1):
            for task_id in [*failed, done]:
                await queue.get_result(task_id, timeout=30)
        pending = await q.enqueue_at(later, tasks.add, 3, 4)
        odd = await queue.options(queue="q", task_id="order/42?x=1#frag%2F..").enqueue_at(
            later, tasks.add, 5, 6
        )
        await queue.add_cron("nightly", "30 2 * * *", tasks.add, args=(1, 2), queue="q")
    worker = worker_processes.start(url, queues=("other",))
    server = processes.web(url)

    # -- the overview ------------------------------------------------------------------------
    def worker_listed() -> bool:
        return any(w["pid"] == worker.pid for w in server.get("/api/workers").json())

    await wait_until(worker_listed, message="the worker")
    (worker_id,) = [w["worker_id"] for w in server.get("/api/workers").json()]
    await wait_until(
        lambda: f'data-worker-id="{worker_id}"' in server.get("/").text,
        message="the worker's row on the overview",
    )
    home = server.get("/")
    assert home.status == 200 and 'data-page="overview"' in home.text
    assert count_cell(home.text, "q:failed") == 3
    assert count_cell(home.text, "q:succeeded") == 1
    assert count_cell(home.text, "q:scheduled") == 2
    assert 'data-cron="nightly"' in home.text and "30 2 * * *" in home.text
    assert 'tr data-throughput="60"' in home.text and 'id="throughput-minutes"' in home.text
    assert 'src="/static/sitq.js"' in home.text and 'href="/static/sitq.css"' in home.text

    # -- listings, filters and paging -----------------------------------------------------------
    listing = server.get("/tasks?queue=q&status=failed").text
    assert all(f'data-task-id="{task_id}"' in listing for task_id in failed)
    assert 'id="requeue-failed"' in listing and 'id="purge-link"' in listing
    assert "broken 0" in listing
    seen: list[str] = []
    path: str | None = "/tasks?queue=q&limit=2"
    pages = 0
    while path is not None:
        html = server.get(path).text
        seen += re.findall(r'<tr data-task-id="([^"]+)"', html)
        found = re.search(r'id="next-page" href="([^"]+)"', html)
        path = found.group(1).replace("&amp;", "&") if found else None
        pages += 1
        if pages > 1:
            assert 'id="first-page"' in html
    assert pages >= 3
    assert len(seen) == 6 and len(set(seen)) == 6
    bad = server.get("/tasks?status=finished")
    assert bad.status == 400 and "status" in bad.text and "running, pending" in bad.text
    assert server.get("/tasks/no-such-task").status == 404

    # -- one task, and its actions ------------------------------------------------------------
    page = server.get(f"/tasks/{failed[0]}").text
    assert 'id="requeue"' in page and 'id="cancel"' not in page
    assert 'id="error"' in page and "ValueError: broken 0" in page
    requeued = server.post(f"/tasks/{failed[0]}/requeue")
    assert requeued.status == 303
    assert requeued.header("Location") == f"/tasks/{failed[0]}?done=requeued"
    shown = follow(server, requeued.header("Location"))
    assert 'id="flash"' in shown and "requeued" in shown
    assert 'data-status="pending"' in shown and 'id="cancel"' in shown
    again = server.post(f"/tasks/{failed[0]}/requeue")
    assert "Only a failed or cancelled task" in follow(server, again.header("Location"))

    cancel = server.post(f"/tasks/{pending}/cancel")
    assert cancel.status == 303
    assert "Task cancelled." in follow(server, cancel.header("Location"))
    assert server.get(f"/api/tasks/{pending}").json()["status"] == "cancelled"
    assert server.post("/tasks/no-such-task/cancel").status == 404

    # An id with '/', '?', '#' and '%' works through its quoted URL.
    quoted = quote(odd, safe="")
    assert f'href="/tasks/{quoted}"' in server.get("/tasks?queue=q&status=pending").text
    odd_page = server.get(f"/tasks/{quoted}")
    assert odd_page.status == 200 and f'<code id="task-id">{odd}</code>' in odd_page.text
    assert f'action="/tasks/{quoted}/cancel"' in odd_page.text
    odd_cancel = server.post(f"/tasks/{quoted}/cancel")
    assert odd_cancel.header("Location") == f"/tasks/{quoted}?done=cancelled"
    assert server.get(f"/api/tasks/{quoted}").json()["status"] == "cancelled"

    # -- requeue all failed of a queue --------------------------------------------------------
    many = server.post("/queues/q/requeue", form={"status": "failed"})
    assert many.status == 303
    assert "2 task(s) requeued." in follow(server, many.header("Location"))
    assert server.get("/api/tasks?queue=q&status=failed").json()["tasks"] == []

    # -- purge asks first ---------------------------------------------------------------------
    choices = server.get("/queues/q/purge").text
    assert all(f'data-purge-status="{s}"' in choices for s in ("pending", "finished"))

    async def two_cancelled() -> bool:
        return count_cell(server.get("/").text, "q:cancelled") == 2

    await wait_until(two_cancelled, message="the cancelled count")
    confirm = server.get("/queues/q/purge?status=cancelled")
    assert confirm.status == 200 and 'id="purge-confirm"' in confirm.text
    assert '<strong id="purge-count">2</strong>' in confirm.text
    unconfirmed = server.post("/queues/q/purge", form={"status": "cancelled"})
    assert unconfirmed.status == 400 and "confirm" in unconfirmed.text
    assert len(server.get("/api/tasks?queue=q&status=cancelled").json()["tasks"]) == 2
    assert (
        server.post("/queues/q/purge", form={"status": "running", "confirm": "yes"}).status == 400
    )
    purged = server.post("/queues/q/purge", form={"status": "cancelled", "confirm": "yes"})
    assert purged.status == 303
    assert "2 task(s) removed." in follow(server, purged.header("Location"))
    assert server.get("/api/tasks?queue=q&status=cancelled").json()["tasks"] == []
    assert server.get(f"/tasks/{pending}").status == 404

    # A flash message is one of the dashboard's own: no query string writes on a page.
    forged = server.get("/?done=%3Cb%3Ehello%3C%2Fb%3E&n=%3Cb%3E").text
    assert 'id="flash"' not in forged and "hello" not in forged
