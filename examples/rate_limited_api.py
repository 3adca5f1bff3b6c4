"""An API client under a rate limit, on SQLite: two workers share one limit of 5 calls a second.

The "API" below refuses a sixth call within one second (HTTP 429), as a real one would. Every
call goes through a task with ``rate_limit="5/s"`` and ``rate_key="api.example.com"``: across
both workers, at most 5 of them start in any second, so none is refused. A task with no rate
limit, enqueued behind the twelve calls, does not wait for them.
"""

import asyncio
import time

from sitq import AsyncWorker, TaskQueue

LIMIT = 5  # calls per second the API accepts
calls: list[float] = []  # when the API was called (the API's own record)


class TooManyRequests(Exception):
    """The API's answer to a call over its limit (HTTP 429)."""


async def fetch_page(page: int) -> float:
    """Call the API for one page; return when the call was made."""
    now = time.time()
    if sum(1 for t in calls if now - t < 1.0) >= LIMIT:
        raise TooManyRequests(f"page {page}: 429 Too Many Requests")
    calls.append(now)
    await asyncio.sleep(0.05)  # the call itself
    return now


async def health_check() -> float:
    """A task without a rate limit."""
    return time.time()


async def main() -> None:
    async with TaskQueue("sqlite:///rate_limited_api.db") as queue:
        api = queue.options(rate_limit=f"{LIMIT}/s", rate_key="api.example.com")
        pages = [await api.enqueue(fetch_page, n) for n in range(12)]
        check = await queue.enqueue(health_check)

        # Two workers on the same file, as two processes or machines would be.
        async with (
            AsyncWorker("sqlite:///rate_limited_api.db", concurrency=4),
            AsyncWorker("sqlite:///rate_limited_api.db", concurrency=4),
        ):
            results = [await queue.get_result(task_id, timeout=60) for task_id in pages]
            checked_at = await queue.get_value(check, timeout=60)
            fetched = [r for r in results if r is not None and r.status == "success"]
            made = [await queue.get_value(r.task_id) for r in fetched]

    refused = len(results) - len(fetched)
    print(f"{len(results) - refused} pages fetched, {refused} refused by the API")
    most = max(sum(1 for t in made if 0 <= t - start < 1.0) for start in made)
    print(f"most calls in any second: {most}")
    print(f"the twelve calls took over 2 s: {max(made) - min(made) > 2.0}")
    print(f"the health check did not wait for them: {checked_at < max(made)}")


if __name__ == "__main__":
    asyncio.run(main())
