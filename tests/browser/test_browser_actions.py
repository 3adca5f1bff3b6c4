"""The dashboard in a real Chromium, acting: requeue a task and a queue's failed tasks, purge,
cancel a running task, watch progress, and markup a task wrote shown as text. Each test has a
queue of its own on the ``ops`` store, whose worker runs what it enqueues."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from sitq import TaskStatus
from tests.browser import tasks
from tests.browser.conftest import SAME_COUNTS, Store, Tab, marker, sitq_info
from tests.browser.tasks import HOSTILE
from tests.services import require_module

require_module("playwright.sync_api")
from playwright.sync_api import Page, expect  # noqa: E402

pytestmark = pytest.mark.browser


def task_path(task_id: str) -> str:
    return "/tasks/" + quote(task_id, safe="")


def test_requeue_a_failed_task_from_its_page(ops: Store, tab: Tab) -> None:
    message = "card declined: insufficient funds (order 1042)"
    task_id = ops.queue.options(queue="requeue-one").enqueue(tasks.fail_once, marker(ops), message)
    ops.wait_status(task_id, TaskStatus.FAILED)

    page = tab.open(ops.server)
    page.click("#nav-failed")
    expect(page.locator("body")).to_have_attribute("data-page", "tasks")
    page.click('#queue-filters a[data-filter-queue="requeue-one"]')
    expect(page.locator('#queue-filters a[data-filter-queue="requeue-one"]')).to_have_class(
        "active"
    )
    row = page.locator(f'tr[data-task-id="{task_id}"]')
    expect(row).to_have_attribute("data-status", "failed")
    expect(row.locator("td.detail")).to_have_text(f"ValueError: {message}")
    row.locator("a.task-link").click()

    expect(page.locator("body")).to_have_attribute("data-page", "task")
    expect(page.locator("#status")).to_have_attribute("data-status", "failed")
    expect(page.locator("#error")).to_have_text(f"ValueError: {message}")
    traceback = page.locator("#traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("in fail_once")
    expect(traceback).to_contain_text(f"ValueError: {message}")

    page.click("form#requeue button")
    expect(page.locator("#flash")).to_have_text("Task requeued: it is pending again.")
    # The page follows the task (pending, running, finished) by itself.
    expect(page.locator("#status")).to_have_attribute("data-status", "success")
    expect(page.locator("#attempts")).to_have_text("1")  # a requeue starts the count anew
    expect(page.locator("#error, #traceback, form#requeue, form#cancel")).to_have_count(0)
    assert ops.status(task_id) is TaskStatus.SUCCESS


def test_requeue_all_failed_tasks_of_a_queue(ops: Store, tab: Tab) -> None:
    view = ops.queue.options(queue="requeue-all")
    ids = [view.enqueue(tasks.fail_once, marker(ops), f"export {n}: disk full") for n in range(3)]
    for task_id in ids:
        ops.wait_status(task_id, TaskStatus.FAILED)

    page = tab.open(ops.server)
    failed = page.locator('a[data-count="requeue-all:failed"]')
    expect(failed).to_have_text("3")
    page.click('form[data-action="requeue-failed"][data-queue="requeue-all"] button')
    expect(page.locator("body")).to_have_attribute("data-page", "tasks")
    expect(page.locator("#flash")).to_have_text("3 task(s) requeued.")
    expect(page.locator('#queue-filters a[data-filter-queue="requeue-all"]')).to_have_class(
        "active"
    )

    page.click("#nav-overview")
    expect(page.locator('a[data-count="requeue-all:succeeded"]')).to_have_text("3")
    expect(failed).to_have_text("0")
    assert [ops.status(task_id) for task_id in ids] == [TaskStatus.SUCCESS] * 3


def test_purge_a_queue_through_its_confirmation(ops: Store, tab: Tab) -> None:
    view = ops.queue.options(queue="purge")
    ids = [view.enqueue(tasks.send_email, f"user{n}@example.com", "Receipt") for n in range(3)]
    ids.append(view.enqueue(tasks.send_email, "gone@mail.invalid", "Receipt"))
    ops.wait_status(ids[-1], TaskStatus.FAILED)
    for task_id in ids[:-1]:
        ops.wait_status(task_id, TaskStatus.SUCCESS)

    page = tab.open(ops.server)
    expect(page.locator('a[data-count="purge:succeeded"]')).to_have_text("3")
    expect(page.locator('a[data-count="purge:failed"]')).to_have_text("1")
    page.click('a[data-action="purge"][data-queue="purge"]')
    expect(page.locator("body")).to_have_attribute("data-page", "purge")
    # Nothing is removed before the confirmation.
    assert all(ops.queue.get_task(task_id) is not None for task_id in ids)
    page.click('#purge-choices a[data-purge-status="finished"]')
    expect(page.locator("#purge-count")).to_have_text("4")
    expect(page.locator("#purge-question")).to_contain_text("finished task(s) of queue purge")
    assert all(ops.queue.get_task(task_id) is not None for task_id in ids)

    page.click("#purge-submit")
    expect(page.locator("body")).to_have_attribute("data-page", "tasks")
    expect(page.locator("#flash")).to_have_text("4 task(s) removed.")
    expect(page.locator("#no-tasks")).to_be_visible()
    assert [ops.queue.get_task(task_id) for task_id in ids] == [None] * 4


def test_cancel_a_running_task_from_its_page(ops: Store, tab: Tab) -> None:
    task_id = ops.queue.options(queue="cancel").enqueue(tasks.wait_for_release, marker(ops))
    ops.wait_status(task_id, TaskStatus.RUNNING)

    page = tab.open(ops.server, task_path(task_id))
    expect(page.locator("#status")).to_have_attribute("data-status", "running")
    expect(page.locator("form#cancel button")).to_have_text("Stop")
    page.click("form#cancel button")
    expect(page.locator("#flash")).to_have_text(
        "The task is running: its worker was asked to stop it."
    )
    expect(page.locator("#status")).to_have_attribute("data-status", "cancelled")
    expect(page.locator("#error")).to_have_text("cancelled while running")
    expect(page.locator("form#cancel")).to_have_count(0)
    expect(page.locator("form#requeue")).to_have_count(1)
    assert ops.status(task_id) is TaskStatus.CANCELLED


def test_progress_shows_without_a_reload(ops: Store, tab: Tab) -> None:
    steps = Path(marker(ops))
    steps.mkdir()
    task_id = ops.queue.options(queue="progress").enqueue(tasks.step_by_step, str(steps), 3)
    ops.wait_progress(task_id, "step 1 of 3")

    page = tab.open(ops.server, task_path(task_id))
    expect(page.locator("#status")).to_have_attribute("data-status", "running")
    expect(page.locator("#progress-section")).to_be_visible()
    expect(page.locator("#progress-message")).to_have_text("step 1 of 3")
    expect(page.locator("#progress-percent")).to_have_text("33%")
    tab.no_reload_marker()
    for step, percent in ((2, "67%"), (3, "100%")):
        (steps / f"go-{step - 1}").touch()
        expect(page.locator("#progress-message")).to_have_text(f"step {step} of 3")
        expect(page.locator("#progress-percent")).to_have_text(percent)
        assert page.eval_on_selector("#progress", "bar => bar.value") == pytest.approx(step / 3)
        assert not tab.reloaded(), "the task's page was loaded again"
    (steps / "go-3").touch()
    # Once it finishes, the page loads again to show the outcome.
    expect(page.locator("#status")).to_have_attribute("data-status", "success")
    expect(page.locator("#progress-section")).to_be_hidden()


def assert_inert(page: Page) -> None:
    """The page holds no element the text could have made: no image, no script but the
    dashboard's own, no event handler attribute."""
    expect(page.locator("img")).to_have_count(0)
    expect(page.locator("[onerror]")).to_have_count(0)
    scripts = page.locator("script")
    expect(scripts).to_have_count(1)
    assert (scripts.get_attribute("src") or "").endswith("/static/sitq.js")


def test_markup_a_task_wrote_shows_as_text(ops: Store, tab: Tab) -> None:
    release = marker(ops)
    task_id = ops.queue.options(queue="escaping").enqueue(tasks.hostile, release)
    ops.wait_progress(task_id, HOSTILE)
    function = f"tests.browser.tasks.{HOSTILE}"

    page = tab.open(ops.server, "/tasks?queue=escaping")
    row = page.locator(f'tr[data-task-id="{task_id}"]')
    expect(row).to_have_attribute("data-status", "running")
    expect(row.locator("td code").nth(1)).to_have_text(function)
    expect(row.locator("td.detail")).to_have_text(f"50% {HOSTILE}")
    assert_inert(page)

    row.locator("a.task-link").click()
    expect(page.locator("#function")).to_have_text(function)
    expect(page.locator("#progress-message")).to_have_text(HOSTILE)
    assert_inert(page)

    Path(release).touch()
    # The page loads again by itself once the task fails.
    expect(page.locator("#status")).to_have_attribute("data-status", "failed")
    expect(page.locator("#error")).to_have_text(f"ValueError: {HOSTILE}")
    expect(page.locator("#traceback")).to_contain_text(f"ValueError: {HOSTILE}")
    assert_inert(page)

    tab.open(ops.server, "/tasks?queue=escaping&status=failed")
    expect(row.locator("td.detail")).to_have_text(f"ValueError: {HOSTILE}")
    assert_inert(page)
    assert tab.dialogs == []


def test_on_postgres_counts_and_a_requeue(postgres_store: Store, tab: Tab) -> None:
    store = postgres_store
    view = store.queue.options(queue="billing")
    failed = view.enqueue(tasks.fail_once, marker(store), "payment provider answered 503")
    for task_id in [view.enqueue(tasks.build_report, "invoices", n) for n in (3, 5)]:
        store.wait_status(task_id, TaskStatus.SUCCESS)
    store.wait_status(failed, TaskStatus.FAILED)

    page = tab.open(store.server)
    expected = sitq_info(store.url)
    assert expected["billing:succeeded"] == 2 and expected["billing:failed"] == 1
    page.wait_for_function(SAME_COUNTS, arg=expected)
    page.click('a[data-count="billing:failed"]')
    page.click(f'tr[data-task-id="{failed}"] a.task-link')
    expect(page.locator("#traceback")).to_contain_text("payment provider answered 503")
    page.click("form#requeue button")
    expect(page.locator("#status")).to_have_attribute("data-status", "success")
    assert store.status(failed) is TaskStatus.SUCCESS
