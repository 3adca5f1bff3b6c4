"""Task functions of the fault suite's own; importable by worker subprocesses."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.conformance import tasks


async def pause_own_worker_once(log_dir: str, label: str) -> int:
    """Log the execution; the first time, also stop the worker process that runs it (SIGSTOP
    to itself, after writing its pid to ``label.paused``). Returns the executing pid.

    The task is a coroutine, so it runs on the worker's event loop: when the test resumes the
    worker (SIGCONT), the attempt returns and its outcome is handed to the worker in the same
    step, before the worker's heartbeat can learn that the lease was taken over meanwhile. So
    the outcome reaches the backend, which must refuse it by its fencing token.
    """
    tasks.record_item(log_dir, label, 0)
    marker = Path(log_dir) / f"{label}.paused"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGSTOP)
    return os.getpid()
