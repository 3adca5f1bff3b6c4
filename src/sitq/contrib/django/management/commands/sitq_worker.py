"""``manage.py sitq_worker``: ``sitq worker`` with Django set up, on the ``SITQ`` backend."""

from __future__ import annotations

import argparse
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from sitq.cli import _worker
from sitq.contrib.django import queue_url
from sitq.errors import SitqError


class Command(BaseCommand):
    """Run a worker until SIGINT or SIGTERM; its options are those of ``sitq worker``."""

    help = (
        "Run a sitq worker on the backend of the SITQ setting, with Django set up (tasks may "
        "use the ORM), until SIGINT or SIGTERM. The options are those of `sitq worker`, and "
        "so are the SITQ_* environment variables."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """``sitq worker``'s options, but the URL, which comes from the ``SITQ`` setting."""
        _worker.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        """Run the worker in this process."""
        if options["kind"] == "process":
            # Its processes start a fresh interpreter each, without Django set up: a task that
            # touches the ORM there would fail on every run.
            raise CommandError(
                "--kind process is not available here: a process worker's processes do not set "
                "Django up. Use --kind async (the default: plain functions run in threads) or "
                "--kind thread, and more worker processes for more CPU"
            )
        try:
            _worker.run(argparse.Namespace(url=queue_url(), **options))
        except SitqError as exc:
            raise CommandError(str(exc)) from exc
