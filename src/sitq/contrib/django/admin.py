"""The tasks in the Django admin, read-only, on every backend.

The list and each task's page read through sitq's own API (``list_tasks``, ``get_task``), which
never reads a task's arguments or result. Nobody can add, change or delete a task here: the
model has only the ``view`` permission, and only GET is answered. Acting on tasks (cancel,
requeue, purge) is the dashboard's (``sitq web``) or the command line's.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from sitq.contrib.django import get_queue
from sitq.contrib.django.models import Task
from sitq.errors import BackendError, ConfigurationError
from sitq.models import TaskStatus

PAGE_SIZE = 50
"""Tasks on one page of the list."""


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    """The task list (by status and queue, paged) and one page per task, read-only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Tasks are enqueued by code, never here."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Read-only."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Read-only."""
        return False

    def get_urls(self) -> list[URLPattern]:
        """The list and a task's page; none of a model's add, change, delete or history."""
        name = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("", self.admin_site.admin_view(self.task_list), name=f"{name}_changelist"),
            path(
                "<path:task_id>/",
                self.admin_site.admin_view(self.task_detail),
                name=f"{name}_detail",
            ),
        ]

    def _check(self, request: HttpRequest) -> None:
        if not self.has_view_permission(request):
            raise PermissionDenied
        # The admin's own views do the same: links in the templates follow this admin site.
        request.current_app = self.admin_site.name

    def _context(self, request: HttpRequest, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": title,
            "has_view_permission": True,
        }

    def task_list(self, request: HttpRequest) -> HttpResponse:
        """One page of tasks, of one status (or all) and one queue (or all)."""
        self._check(request)
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        status = request.GET.get("status") or None
        queue = request.GET.get("queue") or None
        cursor = request.GET.get("cursor") or None
        context = self._context(request, "Tasks")
        context.update(
            statuses=[s.value for s in TaskStatus],
            status=status or "",
            queue=queue or "",
            tasks=[],
            next_url=None,
            error=None,
        )
        code = 200
        try:
            page = get_queue().list_tasks(status, queue, limit=PAGE_SIZE, cursor=cursor)
        except ConfigurationError as exc:
            context["error"], code = str(exc), 400
        except BackendError as exc:
            context["error"], code = f"the backend cannot be read: {exc}", 503
        else:
            context["tasks"] = [
                (reverse(f"{self.admin_site.name}:sitq_task_detail", args=[t.task_id]), t)
                for t in page.tasks
            ]
            if page.next_cursor is not None:
                query = {"status": status or "", "queue": queue or "", "cursor": page.next_cursor}
                context["next_url"] = "?" + urlencode({k: v for k, v in query.items() if v})
        return TemplateResponse(request, "sitq/admin/task_list.html", context, status=code)

    def task_detail(self, request: HttpRequest, task_id: str) -> HttpResponse:
        """What sitq knows of one task: status, function, attempts, times, error, traceback,
        progress."""
        self._check(request)
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        try:
            info = get_queue().get_task(task_id)
        except BackendError as exc:
            context = self._context(request, "Task")
            context["error"] = f"the backend cannot be read: {exc}"
            return TemplateResponse(request, "sitq/admin/task_detail.html", context, status=503)
        if info is None:
            raise Http404(f"no task {task_id!r} (unknown, or its result has expired)")
        context = self._context(request, f"Task {task_id}")
        context.update(task=info, error=None)
        return TemplateResponse(request, "sitq/admin/task_detail.html", context)
