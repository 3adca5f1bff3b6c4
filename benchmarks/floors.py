"""What a bare client reaches on this machine: one acknowledged round trip at a time.

    python -m benchmarks.floors [--calls 3000] [--runs 3]

The ceiling under any enqueue that waits for its acknowledgement: redis-py's asyncio client
running a one-command script (``EVALSHA``), redis-py's sync client pushing to a list (``LPUSH``,
which is Huey's enqueue), and nats-py publishing to a JetStream stream and waiting for the
acknowledgement, one call after the other and 1,000 at once. Medians of ``--runs`` runs. It
uses a stream ``SITQFLOOR`` and the keys ``sitq-floor:*`` and removes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

REDIS_URL = os.environ.get("SITQ_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
NATS_URL = os.environ.get("SITQ_BENCH_NATS_URL", "nats://127.0.0.1:4222")
PAYLOAD = b"x" * 300


async def nats_publish(calls: int) -> tuple[float, float]:
    """Publishes per second: one at a time, then 1,000 at once."""
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    try:
        await js.add_stream(name="SITQFLOOR", subjects=["sitq-floor.>"], storage="file")
        start = time.perf_counter()
        for _ in range(calls):
            await js.publish("sitq-floor.one", PAYLOAD)
        one = calls / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(5):
            await asyncio.gather(*(js.publish("sitq-floor.many", PAYLOAD) for _ in range(1000)))
        many = 5000 / (time.perf_counter() - start)
    finally:
        await js.delete_stream("SITQFLOOR")
        await nc.close()
    return one, many


async def redis_evalsha(calls: int) -> float:
    """One-command scripts per second with redis-py's asyncio client."""
    import redis.asyncio as aredis

    client = aredis.Redis.from_url(REDIS_URL)
    try:
        sha = await client.script_load("return redis.call('SET', KEYS[1], ARGV[1])")
        start = time.perf_counter()
        for _ in range(calls):
            await client.evalsha(sha, 1, "sitq-floor:k", PAYLOAD)  # type: ignore[misc]
        return calls / (time.perf_counter() - start)
    finally:
        await client.delete("sitq-floor:k")
        await client.aclose()


def redis_lpush(calls: int) -> float:
    """List pushes per second with redis-py's sync client."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        start = time.perf_counter()
        for _ in range(calls):
            client.lpush("sitq-floor:l", PAYLOAD)
        return calls / (time.perf_counter() - start)
    finally:
        client.delete("sitq-floor:l")
        client.close()


def main() -> None:
    """Measure and print the medians."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floors")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        figures.setdefault(name, []).append(value)

    for _ in range(args.runs):
        one, many = asyncio.run(nats_publish(args.calls))
        add("nats-py js.publish, one at a time (calls/s)", one)
        add("nats-py js.publish, 1,000 at once (calls/s)", many)
        add(
            "redis-py asyncio EVALSHA, one at a time (calls/s)",
            asyncio.run(redis_evalsha(args.calls)),
        )
        add("redis-py sync LPUSH, one at a time (calls/s)", redis_lpush(args.calls))
    print(f"| bare client, medians of {args.runs} runs | median | runs |")
    print("|---|---:|---|")
    for name, values in figures.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {name} | {statistics.median(values):,.0f} | {runs} |")


if __name__ == "__main__":
    main()
