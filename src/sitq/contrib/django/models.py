"""``Task``: sitq's tasks as the admin lists them. It has no table: the admin reads the tasks
through sitq's own listing (``sitq.contrib.django.admin``), on any backend, and never reads a
task's arguments or result. Its only permission is ``sitq.view_task``."""

from __future__ import annotations

from django.db import models


class Task(models.Model):
    """A sitq task, for the admin's list and permissions (never stored by Django)."""

    id = models.CharField(primary_key=True, max_length=255)

    class Meta:
        managed = False
        default_permissions = ("view",)
        verbose_name = "task"
        verbose_name_plural = "tasks"

    def __str__(self) -> str:
        return str(self.id)
