"""The shop's tasks, and the calls its web views make to enqueue them."""

from __future__ import annotations

from sitq import ExponentialBackoff, RetryPolicy, SyncTaskQueue, TaskQueue

from shop.mailer import mailer

MAIL_RETRY = RetryPolicy(
    max_attempts=5,
    backoff=ExponentialBackoff(initial=30, max_delay=600),
    retry_on=(ConnectionError,),
)
"""A mail is tried 5 times, waiting up to 30 s, 1, 2 and 4 min between tries (full jitter)."""


async def send_receipt(order_id: int, email: str) -> str:
    """Mail the receipt of an order; return where it went."""
    mailer.send(email, f"Your order {order_id}")
    return email


def send_daily_report() -> int:
    """Mail the owner how many mails went out so far; return that count."""
    count = len(mailer.sent)
    mailer.send("owner@shop.example", f"{count} mails sent")
    return count


async def place_order(queue: TaskQueue, order_id: int, email: str) -> str:
    """What the async checkout view does: queue the receipt; return the task id."""
    return await queue.options(retry=MAIL_RETRY).enqueue(send_receipt, order_id, email)


def place_order_sync(queue: SyncTaskQueue, order_id: int, email: str) -> str:
    """The same from sync code (a Django or Flask view)."""
    return queue.options(retry=MAIL_RETRY).enqueue(send_receipt, order_id, email)


async def schedule_reports(queue: TaskQueue) -> None:
    """Mail the daily report at 06:00 UTC."""
    await queue.add_cron("daily-report", "0 6 * * *", send_daily_report)
