"""The Django application of sitq (label ``sitq``)."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.test.signals import setting_changed


class SitqConfig(AppConfig):
    """Checks the ``SITQ`` setting at start-up, so that a mistake in it stops the project at
    once; starts afresh when a test changes ``SITQ`` or ``DATABASES``."""

    name = "sitq.contrib.django"
    label = "sitq"
    verbose_name = "sitq"
    default_auto_field = "django.db.models.AutoField"

    def ready(self) -> None:
        """Read and check ``SITQ`` (nothing connects yet)."""
        from sitq.contrib.django import get_settings

        get_settings()
        setting_changed.connect(_setting_changed, dispatch_uid="sitq-setting-changed")


def _setting_changed(*, setting: str, **_: Any) -> None:
    if setting in ("SITQ", "DATABASES"):
        from sitq.contrib.django import close

        close()
