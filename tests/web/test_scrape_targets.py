"""docs/operating.md, Metrics, and docs/dashboard.md, Metrics: the two scrape targets side by
side, while tasks run. A real ``sitq worker --metrics-port 0`` counts exactly the tasks it ran
(its histogram's counts equal its finished counters), and a real ``sitq web`` shows every
queue's depth as ``sitq_queue_tasks``, equal to what ``sitq info`` prints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sitq import TaskQueue
from tests.conformance import tasks
from tests.conftest import FACTORIES, WorkerProcesses, wait_until
from tests.integration.test_worker_metrics import Scrape, metrics_endpoint, scrape
from tests.web import tasks as web_tasks
from tests.web.server import Processes, WebServer, sitq_info


def web_gauges(web: WebServer) -> dict[str, dict[str, int]]:
    """``sitq web``'s ``/metrics``: queue -> state -> ``sitq_queue_tasks``."""
    reply = web.get("/metrics")
    assert reply.status == 200, reply.text
    counts: dict[str, dict[str, int]] = {}
    for name, labels, value in Scrape(reply.text).samples:
        if name == "sitq_queue_tasks":
            counts.setdefault(labels["queue"], {})[labels["state"]] = int(value)
    return counts


async def gauges_match_info(url: str, web: WebServer) -> bool:
    """True once the dashboard's gauges (counted at most every 2 s) equal ``sitq info``'s
    table, queue by queue, for every queue ``sitq info`` shows."""
    info, gauges = await asyncio.gather(
        asyncio.to_thread(sitq_info, url), asyncio.to_thread(web_gauges, web)
    )
    return bool(info) and all(gauges.get(queue) == counts for queue, counts in info.items())


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_the_worker_and_the_dashboard_scraped_while_tasks_run(
    backend: str,
    tmp_path: Path,
    worker_processes: WorkerProcesses,
    processes: Processes,
    request: pytest.FixtureRequest,
) -> None:
    factory = FACTORIES[backend](tmp_path, request)
    url = factory.url
    assert url is not None
    release = tmp_path / "release"
    async with TaskQueue(factory.make()) as queue:
        q = queue.options(queue="m")
        added = [await q.enqueue(tasks.add, i, i) for i in range(12)]
        failed = [await q.enqueue(tasks.fail, "broken") for _ in range(3)]
        await q.enqueue_in(3600, tasks.add, 0, 0)  # scheduled, stays so
        await queue.options(queue="other").enqueue(tasks.add, 1, 1)  # no worker serves it
        proc = worker_processes.start(
            url, queues=("m",), extra=("--metrics-port", "0", "--import", "tests.web.tasks")
        )
        endpoint = await metrics_endpoint(worker_processes, proc)
        web = processes.web(url)
        for task_id in (*added, *failed):
            assert await queue.get_result(task_id, timeout=60) is not None
        held = await q.enqueue(web_tasks.report_then_wait, 0.5, "half", str(release))

        async def one_running() -> bool:
            return (await scrape(endpoint)).running(queue="m") == 1

        await wait_until(one_running, timeout=30, message="the held task running")
        during = await scrape(endpoint)
        fn = "tests.conformance.tasks."
        assert during.total("sitq_tasks_started_total", queue="m") == 16
        assert during.finished("add") == {"success": 12}
        assert during.finished("fail") == {"failed": 3}
        assert during.observed("add") == 12 and during.observed("fail") == 3
        assert during.total("sitq_tasks_finished_total", queue="m") == 15
        assert during.total("sitq_tasks_started_total", function=fn + "add") == 12
        await wait_until(
            lambda: gauges_match_info(url, web), timeout=30, message="gauges equal to sitq info"
        )
        running = web_gauges(web)
        assert running["m"] == {
            "pending": 0,
            "scheduled": 1,
            "running": 1,
            "succeeded": 12,
            "failed": 3,
            "cancelled": 0,
        }
        assert running["other"]["pending"] == 1

        release.write_text("go")
        assert await queue.get_value(held, timeout=60) == "released"

        async def settled() -> bool:
            now = await scrape(endpoint)
            return (
                now.running(queue="m") == 0
                and now.total("sitq_tasks_finished_total", queue="m") == 16
            )

        await wait_until(settled, timeout=30, message="the held task counted")
        after = await scrape(endpoint)
        assert after.total("sitq_tasks_started_total", queue="m") == 16
        counted = after.total(
            "sitq_tasks_finished_total",
            queue="m",
            function="tests.web.tasks.report_then_wait",
            status="success",
        )
        assert counted == 1
        assert after.total("sitq_task_duration_seconds_count", queue="m") == 16
        await wait_until(
            lambda: gauges_match_info(url, web), timeout=30, message="gauges after the release"
        )
        assert web_gauges(web)["m"]["succeeded"] == 13
        assert worker_processes.stop(proc) == 0
