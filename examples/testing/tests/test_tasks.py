"""The shop's tests: its tasks run in the test itself, with no server and no waiting."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sitq import TaskStatus
from sitq.testing import FakeClock, SyncTestQueue, TestQueue, drain

from shop import tasks
from shop.mailer import mailer


@pytest.fixture
def sitq_clock() -> FakeClock:
    """These tests start at 05:00 UTC on 1 March 2030 (the plugin's clock starts at the real
    time; the queue fixtures take this one instead)."""
    return FakeClock(datetime(2030, 3, 1, 5, 0))


@pytest.fixture(autouse=True)
def fresh_mailer() -> Iterator[None]:
    yield
    mailer.sent.clear()
    mailer.failures = 0


async def test_the_receipt_is_mailed(sitq_queue: TestQueue) -> None:
    task_id = await tasks.place_order(sitq_queue, 42, "ada@example.com")
    assert mailer.sent == []  # enqueued, not run yet
    await drain(sitq_queue)
    assert await sitq_queue.get_value(task_id) == "ada@example.com"
    assert mailer.sent == [("ada@example.com", "Your order 42")]


async def test_the_receipt_gets_through_a_mail_outage(sitq_queue: TestQueue) -> None:
    mailer.failures = 3
    await tasks.place_order(sitq_queue, 42, "ada@example.com")
    # An hour passes on the queue's clock: every retry runs when its backoff is over.
    (result,) = await drain(sitq_queue, advance=timedelta(hours=1))
    assert result.status is TaskStatus.SUCCESS
    assert result.attempts == 4
    assert mailer.sent == [("ada@example.com", "Your order 42")]


async def test_the_receipt_is_given_up_after_five_attempts(sitq_queue: TestQueue) -> None:
    mailer.failures = 10
    await tasks.place_order(sitq_queue, 42, "ada@example.com")
    (result,) = await drain(sitq_queue, advance=timedelta(hours=1))
    assert result.status is TaskStatus.FAILED
    assert result.attempts == 5
    assert result.error == "ConnectionError: the mail server is not answering"


async def test_the_report_goes_out_every_morning(sitq_queue: TestQueue) -> None:
    await tasks.schedule_reports(sitq_queue)
    await tasks.place_order(sitq_queue, 1, "bob@example.com")
    results = await drain(sitq_queue, advance=timedelta(days=3))
    reports = [r for r in results if r.task_id.startswith("cron-")]
    assert [r.started_at.isoformat() for r in reports if r.started_at] == [
        "2030-03-01T06:00:00+00:00",
        "2030-03-02T06:00:00+00:00",
        "2030-03-03T06:00:00+00:00",
    ]
    assert [subject for to, subject in mailer.sent if to == "owner@shop.example"] == [
        "1 mails sent",
        "2 mails sent",
        "3 mails sent",
    ]


def test_sync_code_enqueues_the_same_way(sitq_sync_queue: SyncTestQueue) -> None:
    mailer.failures = 1
    task_id = tasks.place_order_sync(sitq_sync_queue, 7, "bob@example.com")
    assert drain(sitq_sync_queue) == []  # the first attempt failed; its retry is not due yet
    sitq_sync_queue.clock.advance(timedelta(seconds=30))
    (result,) = drain(sitq_sync_queue)
    assert result.task_id == task_id
    assert sitq_sync_queue.get_value(task_id) == "bob@example.com"
