"""What every layer of the dashboard shares: the queue it shows, the cached counts, and its
settings."""

from __future__ import annotations

from dataclasses import dataclass

from sitq.queue import TaskQueue
from sitq.web._counts import Counts

__all__ = ["Dashboard"]


@dataclass(frozen=True, slots=True)
class Dashboard:
    """One dashboard: ``queue`` is read and acted on; ``counts`` caches its counts."""

    queue: TaskQueue
    counts: Counts
    read_only: bool
    token_required: bool
