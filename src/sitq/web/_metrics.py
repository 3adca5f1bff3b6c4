"""``/metrics`` of the dashboard: ``sitq_queue_tasks{queue,state}``, one gauge per queue and
state, from the cached counts (so a scrape costs the backend no more than a page refresh).

It uses prometheus-client (``pip install 'sitq[metrics]'``) through a collector of its own on a
registry of its own, so nothing else a process registers leaks into this page. Without
prometheus-client the route answers 501 and names the extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from sitq.errors import SitqError
from sitq.web._counts import COUNT_STATES, Snapshot
from sitq.web._state import Dashboard

__all__ = ["metrics_route"]

MISSING = "/metrics needs prometheus-client, which is not installed: pip install 'sitq[metrics]'\n"


class _QueueCollector:
    """Yields the gauges of the snapshot it was last given."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "sitq_queue_tasks",
            "Tasks of each queue in each state, from the backend's counts.",
            labels=["queue", "state"],
        )
        if self.snapshot is not None:
            for stats in self.snapshot.queues:
                for state in COUNT_STATES:
                    gauge.add_metric([stats.queue, state], getattr(stats, state))
        yield gauge


def metrics_route(dashboard: Dashboard) -> Route:
    """The ``/metrics`` route."""
    state: dict[str, Any] = {}

    async def metrics(request: Request) -> Response:
        try:
            from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        except ImportError:
            return PlainTextResponse(MISSING, status_code=501)
        if "registry" not in state:
            collector = _QueueCollector()
            registry = CollectorRegistry(auto_describe=False)
            registry.register(collector)
            state["registry"], state["collector"] = registry, collector
        try:
            snapshot = await dashboard.counts.get()
        except SitqError as exc:
            return PlainTextResponse(f"the backend failed: {exc}\n", status_code=503)
        collector = state["collector"]
        collector.snapshot = snapshot
        body = generate_latest(state["registry"])
        return Response(body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return Route("/metrics", metrics, methods=["GET"])
