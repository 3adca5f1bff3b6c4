"""The dashboard's pages (rendered on the server with Jinja2, autoescaped) and
:func:`create_app`, which puts the pages, the JSON API, ``/metrics``, the static files and the
security checks together.

Pages: ``/`` (overview), ``/tasks`` (listing; ``status``, ``queue``, ``limit``, ``cursor``),
``/tasks/{id}`` (one task), ``/queues/{queue}/purge`` (the confirmation page of a purge),
``/login``. Actions are POSTs of forms, each answered with a redirect (303) to the page that
shows the outcome: ``/tasks/{id}/cancel``, ``/tasks/{id}/requeue``,
``/queues/{queue}/requeue`` (all failed tasks of the queue), ``/queues/{queue}/purge`` (with
``confirm=yes``), ``/logout``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from sitq.cron import CronInfo
from sitq.errors import ConfigurationError, SitqError, TaskNotFound
from sitq.models import TaskStatus
from sitq.queue import TaskQueue
from sitq.web._api import api_routes, list_page, multi_params
from sitq.web._counts import COUNT_STATES, Counts
from sitq.web._metrics import metrics_route
from sitq.web._params import (
    LIST_STATUSES,
    PURGE_STATUSES,
    REQUEUE_STATUSES,
    BadParameter,
    check_known,
    parse_listing,
    parse_queue,
    parse_status,
)
from sitq.web._security import (
    COOKIE,
    Guard,
    cookie_path,
    cookie_value,
    root_path,
    token_matches,
)
from sitq.web._state import Dashboard

__all__ = ["create_app"]

HERE = Path(__file__).resolve().parent

MAX_FORM_BYTES = 65536
"""The largest form body an action takes."""

_MESSAGES = {
    "cancelled": "Task cancelled.",
    "stopping": "The task is running: its worker was asked to stop it.",
    "not-cancelled": "The task had already finished: there was nothing to cancel.",
    "requeued": "Task requeued: it is pending again.",
    "not-requeued": "Only a failed or cancelled task can be requeued.",
    "requeued-many": "{n} task(s) requeued.",
    "purged": "{n} task(s) removed.",
    "logged-out": "Logged out.",
}
"""The messages an action's redirect may ask a page to show (``?done=<key>&n=<count>``): a
fixed set, so that no query string can put text of its own on a page."""

_STATE_STATUS = {
    "pending": "pending",
    "scheduled": "pending",
    "running": "running",
    "succeeded": "success",
    "failed": "failed",
    "cancelled": "cancelled",
}
"""The listing status that shows the tasks of each count."""

Handler = Callable[[Request], Awaitable[Response]]


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["urlpart"] = lambda value: quote(str(value), safe="")
    env.filters["percent"] = lambda value: "-" if value is None else f"{value:.0%}"
    env.globals["COUNT_STATES"] = COUNT_STATES
    env.globals["STATE_STATUS"] = _STATE_STATUS
    env.globals["LIST_STATUSES"] = LIST_STATUSES
    env.globals["PURGE_STATUSES"] = PURGE_STATUSES
    return env


class _Pages:
    def __init__(self, dashboard: Dashboard, token: str | None) -> None:
        self.dashboard = dashboard
        self.queue = dashboard.queue
        self.token = token
        self.env = _environment()

    # -- rendering ------------------------------------------------------------------------

    def render(
        self, request: Request, name: str, status_code: int = 200, **values: Any
    ) -> Response:
        done = request.query_params.get("done")
        message = _MESSAGES.get(done or "")
        if message is not None:
            count = request.query_params.get("n", "")
            message = message.format(n=int(count) if count.isdigit() else "some")
        html = self.env.get_template(name).render(
            root=root_path(request.scope),
            read_only=self.dashboard.read_only,
            token_required=self.dashboard.token_required,
            flash=message,
            **values,
        )
        return HTMLResponse(html, status_code=status_code)

    def error(self, request: Request, status_code: int, message: str) -> Response:
        return self.render(request, "error.html", status_code, page="error", message=message)

    def redirect(self, request: Request, path: str, **query: str | int) -> Response:
        target = root_path(request.scope) + path
        if query:
            target += "?" + urlencode(query)
        return RedirectResponse(target, status_code=303)

    def pages(self, handler: Handler) -> Handler:
        """Answer a bad parameter with a 400 page, an unknown task with 404, a failed backend
        with 503."""

        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except BadParameter as exc:
                return self.error(request, 400, str(exc))
            except ConfigurationError as exc:
                return self.error(request, 400, str(exc))
            except TaskNotFound as exc:
                return self.error(request, 404, str(exc))
            except SitqError as exc:
                return self.error(request, 503, f"the backend failed: {exc}")

        return wrapped

    # -- pages ----------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        check_known(multi_params(request), ("done", "n"))
        snapshot = await self.dashboard.counts.get()
        crons: list[CronInfo] = []
        cron_error = None
        try:
            crons = await self.queue.list_crons()
        except (SitqError, ValueError, KeyError) as exc:
            cron_error = f"the cron schedules could not be read: {exc}"
        return self.render(
            request,
            "overview.html",
            page="overview",
            snapshot=snapshot,
            crons=crons,
            cron_error=cron_error,
        )

    async def tasks(self, request: Request) -> Response:
        listing = parse_listing(multi_params(request), extra=("done", "n"))
        page = await list_page(
            self.dashboard, listing.statuses, listing.queue, listing.limit, listing.cursor
        )
        snapshot = await self.dashboard.counts.get()
        status = listing.statuses[0] if listing.statuses and len(listing.statuses) == 1 else None
        base: dict[str, str | int] = {}
        if listing.statuses:
            base["status"] = ",".join(listing.statuses)
        if listing.queue:
            base["queue"] = listing.queue
        if listing.limit != 50:
            base["limit"] = listing.limit
        next_url = None
        if page.next_cursor is not None:
            next_url = "/tasks?" + urlencode({**base, "cursor": page.next_cursor})
        return self.render(
            request,
            "tasks.html",
            page="tasks",
            tasks=page.tasks,
            status=status,
            statuses=listing.statuses,
            queue=listing.queue,
            queues=sorted(set(snapshot.queue_names()) | ({listing.queue} - {None})),
            first_url="/tasks?" + urlencode(base) if listing.cursor else None,
            next_url=next_url,
            filter_url=_filter_url,
        )

    async def task(self, request: Request) -> Response:
        check_known(multi_params(request), ("done", "n"))
        task_id = request.path_params["task_id"]
        found = await self.queue.get_task(task_id)
        if found is None:
            return self.error(
                request, 404, f"no task {task_id!r} (unknown, or its result has expired)"
            )
        return self.render(request, "task.html", page="task", task=found)

    async def purge_confirm(self, request: Request) -> Response:
        if self.dashboard.read_only:
            return self.error(request, 403, "this dashboard is read-only: it takes no action")
        params = multi_params(request)
        check_known(params, ("status",))
        queue = parse_queue(request.path_params["queue"], required=True)
        raw = params.get("status", [None])[0]
        status = None if raw in (None, "") else parse_status(raw, PURGE_STATUSES)
        snapshot = await self.dashboard.counts.get()
        stats = next((s for s in snapshot.queues if s.queue == queue), None)
        counts = {
            "pending": 0 if stats is None else stats.pending + stats.scheduled,
            "failed": 0 if stats is None else stats.failed,
            "cancelled": 0 if stats is None else stats.cancelled,
            "success": 0 if stats is None else stats.succeeded,
        }
        counts["finished"] = counts["failed"] + counts["cancelled"] + counts["success"]
        return self.render(
            request,
            "purge.html",
            page="purge",
            queue=queue,
            status=status,
            counts=counts,
            max_age=snapshot.max_age,
        )

    # -- actions --------------------------------------------------------------------------

    async def cancel(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        await _form(request)
        done = await self.queue.cancel(task_id)
        status = await self.queue.get_status(task_id)
        if not done:
            key = "not-cancelled"
        elif status is TaskStatus.RUNNING:
            key = "stopping"
        else:
            key = "cancelled"
        return self.redirect(request, f"/tasks/{quote(task_id, safe='')}", done=key)

    async def requeue(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        await _form(request)
        key = "requeued" if await self.queue.requeue(task_id) else "not-requeued"
        return self.redirect(request, f"/tasks/{quote(task_id, safe='')}", done=key)

    async def requeue_queue(self, request: Request) -> Response:
        form = await _form(request)
        queue = parse_queue(request.path_params["queue"], required=True)
        status = parse_status(_field(form, "status"), REQUEUE_STATUSES, default="failed")
        count = await self.queue.requeue_many(status, queue)
        return self.redirect(request, "/tasks", queue=str(queue), done="requeued-many", n=count)

    async def purge(self, request: Request) -> Response:
        form = await _form(request)
        queue = parse_queue(request.path_params["queue"], required=True)
        assert queue is not None
        status = parse_status(_field(form, "status"), PURGE_STATUSES)
        if _field(form, "confirm") != "yes":
            raise BadParameter("confirm", "a purge needs confirm=yes: confirm it on its page")
        removed = await self.queue.purge(queue, status)
        return self.redirect(request, "/tasks", queue=queue, done="purged", n=removed)

    # -- logging in -----------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        if self.token is None:
            return self.redirect(request, "/")
        return self.render(
            request,
            "login.html",
            page="login",
            next=_local(request.query_params.get("next")),
            login_error=None,
        )

    async def login(self, request: Request) -> Response:
        if self.token is None:
            return self.redirect(request, "/")
        form = await _form(request)
        target = _local(_field(form, "next"))
        if not token_matches(_field(form, "token") or "", self.token):
            return self.render(
                request,
                "login.html",
                401,
                page="login",
                next=target,
                login_error="That token is not the one this dashboard was started with.",
            )
        response = RedirectResponse(root_path(request.scope) + target, status_code=303)
        response.set_cookie(
            COOKIE,
            cookie_value(self.token),
            path=cookie_path(request.scope),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        await _form(request)
        target = "/login" if self.token is not None else "/"
        response = self.redirect(request, target, done="logged-out")
        response.delete_cookie(
            COOKIE, path=cookie_path(request.scope), httponly=True, samesite="strict"
        )
        return response

    def routes(self) -> list[BaseRoute]:
        table: list[tuple[str, Handler, str]] = [
            ("/", self.overview, "GET"),
            ("/tasks", self.tasks, "GET"),
            ("/tasks/{task_id:path}/cancel", self.cancel, "POST"),
            ("/tasks/{task_id:path}/requeue", self.requeue, "POST"),
            ("/tasks/{task_id:path}", self.task, "GET"),
            ("/queues/{queue}/purge", self.purge_confirm, "GET"),
            ("/queues/{queue}/purge", self.purge, "POST"),
            ("/queues/{queue}/requeue", self.requeue_queue, "POST"),
            ("/login", self.login_page, "GET"),
            ("/login", self.login, "POST"),
            ("/logout", self.logout, "POST"),
        ]
        return [Route(path, self.pages(h), methods=[m]) for path, h, m in table]


def _filter_url(statuses: Sequence[str] | None, queue: str | None) -> str:
    query: dict[str, str] = {}
    if statuses:
        query["status"] = ",".join(statuses)
    if queue:
        query["queue"] = queue
    return "/tasks?" + urlencode(query) if query else "/tasks"


def _local(target: str | None) -> str:
    """A path inside the dashboard to go to after logging in; anything else is ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _field(form: dict[str, list[str]], name: str) -> str | None:
    values = form.get(name, [])
    if len(values) > 1:
        raise BadParameter(name, f"{name} is given {len(values)} times: give it once")
    return values[0] if values else None


async def _form(request: Request) -> dict[str, list[str]]:
    """The fields of a urlencoded form (the only kind the pages send)."""
    length = request.headers.get("content-length", "0")
    if length.isdigit() and int(length) > MAX_FORM_BYTES:
        raise BadParameter("body", f"a form of more than {MAX_FORM_BYTES} bytes is refused")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadParameter("body", f"a form of more than {MAX_FORM_BYTES} bytes is refused")
    try:
        return parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        raise BadParameter("body", "the form is not UTF-8 text") from None


def create_app(
    queue: TaskQueue,
    *,
    token: str | None = None,
    read_only: bool = False,
    counts_ttl: float = 2.0,
    trusted_origins: Iterable[str] = (),
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The dashboard of ``queue`` as an ASGI application (Starlette), to serve with any ASGI
    server or to mount in a FastAPI or Starlette application (links follow the mount point).

    - ``token``: every request then needs ``Authorization: Bearer <token>`` or the cookie the
      login form (``/login``) sets.
    - ``read_only``: no action is shown, and every POST is refused with 403.
    - ``counts_ttl``: the counts of each queue are read from the backend at most once per this
      many seconds, shared by every viewer (so they may be that much out of date).
    - ``trusted_origins``: origins (``https://ops.example.com``) allowed to POST besides the
      request's own, for a dashboard behind a proxy that changes the ``Host`` header.
    - ``allowed_hosts``: host names the ``Host`` header may name (``None``: any); ``sitq web``
      on a loopback address sets the loopback names.

    The queue connects on first use; closing it is the caller's part.
    """
    if not isinstance(queue, TaskQueue):
        raise ConfigurationError(
            f"create_app needs a sitq.TaskQueue, not {type(queue).__name__} (for a "
            "SyncTaskQueue, pass TaskQueue(url) of the same backend)"
        )
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ConfigurationError("token must be a non-empty string, or None for no token")
    dashboard = Dashboard(
        queue=queue,
        counts=Counts(queue, counts_ttl),
        read_only=read_only,
        token_required=token is not None,
    )
    pages = _Pages(dashboard, token)
    routes: list[BaseRoute] = [
        *api_routes(dashboard),
        metrics_route(dashboard),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        *pages.routes(),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                Guard,
                token=token,
                read_only=read_only,
                trusted_origins=list(trusted_origins),
                allowed_hosts=allowed_hosts,
            )
        ],
    )
