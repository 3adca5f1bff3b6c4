"""Cron schedules, a concurrency limit and a distributed lock, on SQLite, in one script."""

import asyncio
import time

from sitq import AsyncWorker, TaskQueue


async def heartbeat() -> float:
    return time.time()


async def call_api(tenant: str, n: int) -> str:
    await asyncio.sleep(0.1)  # a call to a rate-limited service
    return f"{tenant}#{n}"


async def main() -> None:
    async with TaskQueue("sqlite:///schedules.db") as queue:
        # Cron: the schedule lives in the backend; every worker drives it, and each tick runs
        # once however many workers there are. Six fields put seconds first.
        await queue.add_cron("heartbeat", "* * * * * *", heartbeat)
        await queue.add_cron("report", "30 2 * * *", heartbeat, timezone="Europe/Paris")
        for cron in await queue.list_crons():
            print(f"{cron.name}: {cron.expression!r} in {cron.timezone}")

        # Concurrency: at most two of these run at once, across every worker on every host.
        tenant = queue.options(concurrency_key="tenant-7", concurrency_limit=2)
        ids = [await tenant.enqueue(call_api, "tenant-7", n) for n in range(6)]

        async with AsyncWorker(queue.backend, concurrency=10):
            print("api:", [await queue.get_value(task_id, timeout=30) for task_id in ids])

            # A lock: one holder at a time, extended while held, freed by its TTL if the
            # holder dies.
            async with queue.lock("nightly-report", ttl=30, timeout=10):
                print("holding nightly-report")

            started = time.time()
            while time.time() - started < 10:
                (stats,) = await queue.stats()
                if stats.succeeded >= 8:  # six api calls and at least two heartbeats
                    break
                await asyncio.sleep(0.2)
            print("heartbeats ran:", stats.succeeded - 6 >= 2)

        await queue.remove_cron("heartbeat")
        await queue.remove_cron("report")


if __name__ == "__main__":
    asyncio.run(main())
