"""One benchmark worker process: connects, says ``ready``, starts on ``go``, stops on ``stop``."""

from __future__ import annotations

import asyncio
import os
import sys

from sitq import backend_from_url
from sitq._loop import run
from sitq.worker import WORKER_KINDS, Worker


async def ready_worker(
    url: str, kind: str, concurrency: int
) -> tuple[Worker, asyncio.StreamReader]:
    """A worker connected to ``url`` (not started) and a reader of this process's stdin, once
    ``ready`` has been said on stdout."""
    worker = WORKER_KINDS[kind](
        backend_from_url(url),
        concurrency=concurrency,
        poll_interval=1.0,
        metrics=os.environ.get("SITQ_BENCH_WORKER_METRICS", "off") == "on",
    )
    if worker.metrics is not None:
        worker.metrics.serve(0)  # served as `sitq worker --metrics-port` does (not scraped)
    await worker.backend.connect()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    return worker, reader


async def main(url: str, kind: str, concurrency: int) -> None:
    worker, reader = await ready_worker(url, kind, concurrency)
    while line := (await reader.readline()).decode().strip():
        if line == "go":
            await worker.start()
            print("started", flush=True)
        elif line == "stop":
            break
    await worker.stop()
    await worker.backend.close()
    if worker.metrics is not None:
        worker.metrics.close()
        counted = os.environ.get("SITQ_BENCH_WORKER_METRICS_OUT")
        if counted:  # what the metrics counted, for the benchmark to check
            from prometheus_client import generate_latest
            from prometheus_client.parser import text_string_to_metric_families

            text = generate_latest(worker.metrics.registry).decode()
            finished = sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "sitq_tasks_finished_total"
            )
            with open(counted, "w") as out:
                out.write(f"{finished:.0f}")


if __name__ == "__main__":
    log_format = os.environ.get("SITQ_BENCH_WORKER_LOG", "off")
    if log_format != "off":
        # One line per task at INFO, to stderr (a file the benchmark chose), as `sitq worker`.
        from sitq.cli._worker import configure_logging

        configure_logging("INFO", log_format)
    run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])), os.environ.get("SITQ_LOOP", "asyncio"))
