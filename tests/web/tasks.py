"""Task functions the dashboard tests enqueue; importable by worker subprocesses."""

from __future__ import annotations

import sitq
from tests.conformance.tasks import _wait_for_file

HOSTILE = '<script>alert(1)</script> "><img src=x onerror=alert(1)>'
"""Text that runs script if a page shows it unescaped."""


def report_then_wait(value: float, message: str, release: str) -> str:
    """Report progress ``value`` with ``message``, then run until ``release`` exists."""
    sitq.current_task().set_progress(value, message)
    _wait_for_file(release)
    return "released"
