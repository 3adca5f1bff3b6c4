"""Why a NATS task message carries its queue and priority in its subject, not its id.

    python -m benchmarks.nats_subjects [--messages 100000]

One write per enqueue would need the work message to be findable by task id, i.e. a subject per
task (``q.<queue>.<priority>.<id>``) and consumers filtering ``q.<queue>.<priority>.*``. On NATS
2.9 such a wildcard filter makes the server scan the stream: this measures a fetch from an empty
queue's consumer beside ``--messages`` queued tasks, with a subject per task and with one subject
per queue and priority (sitq's layout). It uses a stream ``SITQSUBJ`` and removes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid

NATS_URL = os.environ.get("SITQ_BENCH_NATS_URL", "nats://127.0.0.1:4222")


async def fetch_ms(messages: int, per_task: bool) -> float:
    """Median milliseconds of a no-wait fetch from a consumer whose queue is empty."""
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        await js.add_stream(
            name="SITQSUBJ", subjects=["sitq-subj.>"], retention="workqueue", storage="file"
        )
        for _ in range(messages):
            suffix = f".{uuid.uuid4().hex}" if per_task else ""
            await nc.publish(f"sitq-subj.q.default.0{suffix}", b"x" * 200)
        await nc.flush()
        await js.publish("sitq-subj.q.default.0" + (".last" if per_task else ""), b"x")
        empty = "sitq-subj.q.other.5" + (".*" if per_task else "")
        await js.add_consumer(
            "SITQSUBJ", durable_name="empty", filter_subject=empty, ack_policy="explicit"
        )
        times = []
        for _ in range(5):
            start = time.perf_counter()
            await nc.request(
                "$JS.API.CONSUMER.MSG.NEXT.SITQSUBJ.empty",
                json.dumps({"batch": 1, "no_wait": True}).encode(),
                timeout=30,
            )
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)
    finally:
        await js.delete_stream("SITQSUBJ")
        await nc.close()


def main() -> None:
    """Measure both layouts and print them."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nats_subjects")
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    for per_task, layout in (
        (False, "a subject per queue and priority"),
        (True, "a subject per task"),
    ):
        ms = asyncio.run(fetch_ms(args.messages, per_task))
        print(f"{layout}: fetch from an empty queue beside {args.messages:,} tasks: {ms:.2f} ms")


if __name__ == "__main__":
    main()
