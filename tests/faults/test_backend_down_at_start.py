"""A worker started while its backend is down waits for it instead of exiting.

``sitq worker`` (``Worker.run``) retries connecting with back-off (0.1 s doubling to 5 s), one log
line per attempt with the URL redacted, until the server answers, and then works as usual; a
signal meanwhile stops it at once; ``--connect-timeout`` / ``connect_timeout=`` bounds the wait.
The servers are the test's own, on free loopback ports, started only after the worker.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from sitq import AsyncWorker, BackendError, TaskQueue
from tests.conformance import tasks
from tests.conftest import WorkerProcesses, wait_until, with_query
from tests.servers import free_port, own_server

UNREACHABLE = "backend unreachable ("


@pytest.mark.parametrize("name", ["redis", "nats"])
async def test_a_worker_started_before_its_server_works_once_it_is_up(
    name: str, worker_processes: WorkerProcesses, tmp_path: Path
) -> None:
    server = own_server(name, tmp_path / "server")
    # A NATS client retries within one connection attempt for up to connect_timeout (5 s).
    url = with_query(server.url, connect_timeout="1") if name == "nats" else server.url
    try:
        proc = worker_processes.start(url, concurrency=2)
        await wait_until(
            lambda: worker_processes.output(proc).count(UNREACHABLE) >= 2,
            timeout=30,
            message="the worker to retry connecting",
        )
        assert proc.poll() is None, worker_processes.output(proc)
        await server.start()
        async with TaskQueue(server.url) as queue:
            task_id = await queue.enqueue(tasks.add, 20, 22)
            assert await queue.get_value(task_id, timeout=30) == 42
        assert worker_processes.stop(proc) == 0
        output = worker_processes.output(proc)
        assert "; retrying in " in output, output
    finally:
        server.stop()


async def test_a_signal_stops_a_worker_that_waits_for_its_backend(
    worker_processes: WorkerProcesses,
) -> None:
    url = f"redis://:pw-{free_port()}-secret@127.0.0.1:{free_port()}/0"
    proc = worker_processes.start(url)
    await wait_until(
        lambda: UNREACHABLE in worker_processes.output(proc),
        timeout=30,
        message="the worker to retry connecting",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    output = worker_processes.output(proc)
    assert "SIGTERM: stopping before the worker started" in output, output
    assert "-secret" not in output, "the password is in the worker's log"


async def test_run_gives_up_after_its_connect_timeout(caplog: pytest.LogCaptureFixture) -> None:
    worker = AsyncWorker(f"redis://127.0.0.1:{free_port()}/0?connect_timeout=1")
    with pytest.raises(BackendError, match="cannot connect"):
        await worker.run(connect_timeout=0.3)
    assert UNREACHABLE in caplog.text
    assert not worker.running and not worker.backend.connected
