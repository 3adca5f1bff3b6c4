"""The dashboard's JSON API: the same data as the pages, for scripts and for the pages' own
refreshes.

=======================================  ==================================================
``GET /api/queues``                      each queue's counts (``queue`` and the counts of
                                         ``sitq info``), from the cached counts
``GET /api/overview``                    the counts, the live workers and the throughput as
                                         of one refresh (what the overview page polls)
``GET /api/tasks``                       ``{"tasks": [...], "next_cursor": ...}``; parameters
                                         ``status`` (repeat or comma-separate), ``queue``,
                                         ``limit`` (1-1000, default 50), ``cursor``
``GET /api/tasks/{id}``                  one task; 404 when unknown
``POST /api/tasks/{id}/requeue``         200 requeued; 409 not failed or cancelled; 404
``POST /api/tasks/{id}/cancel``          200 cancelled or asked to stop; 409 finished; 404
``POST /api/queues/{queue}/purge``       ``?status=`` pending, failed, cancelled, success or
                                         finished (required); the count removed
``POST /api/queues/{queue}/requeue``     ``?status=`` failed (default) or cancelled; the count
``GET /api/workers``                     the live workers
=======================================  ==================================================

Tasks carry the fields of :class:`sitq.TaskInfo` and workers those of :class:`sitq.WorkerInfo`
(times as ISO 8601 text). A bad parameter answers 400 with ``{"error", "parameter", "valid"}``;
a backend failure 503 with ``{"error"}``. Nothing here reads a task's arguments or result.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sitq.errors import ConfigurationError, SitqError, TaskNotFound
from sitq.models import TaskPage, TaskStatus
from sitq.web._params import (
    PURGE_STATUSES,
    REQUEUE_STATUSES,
    BadParameter,
    check_known,
    parse_listing,
    parse_queue,
    parse_status,
    single,
)
from sitq.web._state import Dashboard

__all__ = ["api_routes", "list_page", "multi_params"]

Handler = Callable[[Request], Awaitable[Response]]


def multi_params(request: Request) -> dict[str, list[str]]:
    """The query parameters, each with all of its values."""
    found: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        found.setdefault(key, []).append(value)
    return found


async def list_page(
    dashboard: Dashboard,
    statuses: list[str] | None,
    queue: str | None,
    limit: int,
    cursor: str | None,
) -> TaskPage:
    """One page of the listing; a cursor that does not fit is the ``cursor`` parameter's fault."""
    try:
        return await dashboard.queue.list_tasks(statuses, queue, limit=limit, cursor=cursor)
    except ConfigurationError as exc:
        if cursor is None:
            raise
        raise BadParameter(
            "cursor", f"{exc}; start again without cursor for the first page"
        ) from None


def _unknown(task_id: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"no task {task_id!r} (unknown, or its result has expired)", "task_id": task_id},
        status_code=404,
    )


def _json_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except BadParameter as exc:
            return JSONResponse(exc.to_dict(), status_code=400)
        except ConfigurationError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except TaskNotFound as exc:
            return _unknown(exc.task_id)
        except SitqError as exc:
            return JSONResponse({"error": f"the backend failed: {exc}"}, status_code=503)

    return wrapped


class _Api:
    def __init__(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.queue = dashboard.queue

    async def queues(self, request: Request) -> Response:
        snapshot = await self.dashboard.counts.get()
        return JSONResponse(snapshot.queue_dicts())

    async def overview(self, request: Request) -> Response:
        snapshot = await self.dashboard.counts.get()
        return JSONResponse(
            {
                "queues": snapshot.queue_dicts(),
                "workers": [w.to_dict() for w in snapshot.workers],
                "throughput": snapshot.throughput.to_dict(),
                "counted_at": snapshot.counted_at.isoformat(),
                "max_age": snapshot.max_age,
            }
        )

    async def tasks(self, request: Request) -> Response:
        listing = parse_listing(multi_params(request))
        page = await list_page(
            self.dashboard, listing.statuses, listing.queue, listing.limit, listing.cursor
        )
        return JSONResponse(
            {"tasks": [t.to_dict() for t in page.tasks], "next_cursor": page.next_cursor}
        )

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        found = await self.queue.get_task(task_id)
        if found is None:
            return _unknown(task_id)
        return JSONResponse(found.to_dict())

    async def requeue(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        check_known(multi_params(request), ())
        if await self.queue.requeue(task_id):
            return JSONResponse({"task_id": task_id, "requeued": True, "status": "pending"})
        status = await self.queue.get_status(task_id)
        shown = "gone" if status is None else status.value
        return JSONResponse(
            {
                "task_id": task_id,
                "requeued": False,
                "status": shown,
                "error": f"task {task_id!r} is {shown}: only failed or cancelled tasks can be "
                "requeued",
            },
            status_code=409,
        )

    async def cancel(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        check_known(multi_params(request), ())
        done = await self.queue.cancel(task_id)
        status = await self.queue.get_status(task_id)
        shown = "gone" if status is None else status.value
        if done:
            return JSONResponse(
                {
                    "task_id": task_id,
                    "cancelled": True,
                    "status": shown,
                    "stopping": status is TaskStatus.RUNNING,
                }
            )
        return JSONResponse(
            {
                "task_id": task_id,
                "cancelled": False,
                "status": shown,
                "error": f"task {task_id!r} already finished ({shown}): nothing to cancel",
            },
            status_code=409,
        )

    async def purge(self, request: Request) -> Response:
        params = multi_params(request)
        check_known(params, ("status",))
        queue = parse_queue(request.path_params["queue"], required=True)
        assert queue is not None
        status = parse_status(single(params, "status"), PURGE_STATUSES)
        removed = await self.queue.purge(queue, status)
        return JSONResponse({"queue": queue, "status": status, "purged": removed})

    async def requeue_queue(self, request: Request) -> Response:
        params = multi_params(request)
        check_known(params, ("status",))
        queue = parse_queue(request.path_params["queue"], required=True)
        status = parse_status(single(params, "status"), REQUEUE_STATUSES, default="failed")
        count = await self.queue.requeue_many(status, queue)
        return JSONResponse({"queue": queue, "status": status, "requeued": count})

    async def workers(self, request: Request) -> Response:
        return JSONResponse([w.to_dict() for w in await self.queue.list_workers()])


def api_routes(dashboard: Dashboard) -> list[Route]:
    """The routes of the JSON API, under ``/api``."""
    api = _Api(dashboard)

    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, _json_errors(handler), methods=[method])

    routes: list[tuple[str, Handler, str]] = [
        ("/api/queues", api.queues, "GET"),
        ("/api/overview", api.overview, "GET"),
        ("/api/workers", api.workers, "GET"),
        ("/api/tasks", api.tasks, "GET"),
        ("/api/tasks/{task_id:path}/requeue", api.requeue, "POST"),
        ("/api/tasks/{task_id:path}/cancel", api.cancel, "POST"),
        ("/api/tasks/{task_id:path}", api.task, "GET"),
        ("/api/queues/{queue}/purge", api.purge, "POST"),
        ("/api/queues/{queue}/requeue", api.requeue_queue, "POST"),
    ]
    return [route(path, handler, method) for path, handler, method in routes]
