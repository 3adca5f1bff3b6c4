"""The dashboard in a real Chromium, reading: the overview's counts are those of ``sitq info``
and refresh by themselves, every page as a screenshot, a token's login form, and a read-only
dashboard with no action on any page. All on the shop's store (``showcase``)."""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from sitq import TaskStatus
from tests.browser import tasks
from tests.browser.conftest import (
    LIVE,
    SAME_COUNTS,
    Sessions,
    Store,
    Tab,
    count_cells,
    sitq_info,
)
from tests.services import require_module

require_module("playwright.sync_api")
from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

STATES = ("pending", "scheduled", "running", "succeeded", "failed", "cancelled")
TOKEN = "browser-test-token"


def task_path(task_id: str) -> str:
    return "/tasks/" + quote(task_id, safe="")


def test_overview_counts_are_those_of_sitq_info(showcase: Store, tab: Tab) -> None:
    page = tab.open(showcase.server)
    expect(page.locator("body")).to_have_attribute("data-page", "overview")
    expected = sitq_info(showcase.url)
    assert {key.split(":")[0] for key in expected} == {"emails", "images", "reports"}
    for state in STATES:
        assert sum(n for key, n in expected.items() if key.endswith(f":{state}")) > 0, state
    expect(page.locator("#counts tr[data-queue]")).to_have_count(3)
    # The page shows counts up to 2 s old and refreshes them: it comes to show these.
    page.wait_for_function(SAME_COUNTS, arg=expected, timeout=LIVE)
    assert count_cells(page) == expected
    # Each count links to the tasks it counts.
    page.click('a[data-count="reports:failed"]')
    expect(page.locator("body")).to_have_attribute("data-page", "tasks")
    rows = page.locator("#tasks tr[data-task-id]")
    expect(rows).to_have_count(expected["reports:failed"])
    expect(rows.first).to_have_attribute("data-status", "failed")


def test_overview_counts_refresh_without_a_reload(showcase: Store, tab: Tab) -> None:
    page = tab.open(showcase.server)
    expect(page.locator("#counts tr[data-queue]")).to_have_count(3)
    tab.no_reload_marker()
    (emails,) = [s for s in showcase.queue.stats() if s.queue == "emails"]
    view = showcase.queue.options(queue="emails")
    for name in ("margaret", "dennis", "frances"):
        view.enqueue(tasks.send_email, f"{name}@example.com", "Spring newsletter")
    for hours in (20, 30):
        view.enqueue_in(hours * 3600, tasks.send_email, "ada@example.com", "Reminder")
    # The worker is busy with the two image tasks: these stay pending.
    expect(page.locator('[data-count="emails:pending"]')).to_have_text(str(emails.pending + 3))
    expect(page.locator('[data-count="emails:scheduled"]')).to_have_text(str(emails.scheduled + 2))
    assert not tab.reloaded(), "the overview was loaded again"


def test_screenshots_of_every_page(showcase: Store, tab: Tab) -> None:
    ids = showcase.ids
    page = tab.open(showcase.server)
    expect(page.locator("#workers tr[data-worker-id]")).to_have_count(1)
    expect(page.locator("#crons tr[data-cron]")).to_have_count(2)
    finished = page.locator('#throughput tr[data-throughput="900"] [data-field="finished"]')
    expect(finished).not_to_have_text("0")
    tab.shot("overview")

    page.click("#nav-tasks")
    expect(page.locator("body")).to_have_attribute("data-page", "tasks")
    rows = page.locator("#tasks tr[data-task-id]")
    expect(rows.first).to_have_attribute("data-status", "running")
    statuses = set(rows.evaluate_all("rows => rows.map(r => r.dataset.status)"))
    assert statuses == {"running", "pending", "failed", "cancelled", "success"}
    # A shorter page for the picture, with every status still on it.
    tab.open(showcase.server, "/tasks?limit=24")
    expect(rows).to_have_count(24)
    expect(page.locator("#next-page")).to_be_visible()
    expect(rows.last).to_have_attribute("data-status", "success")
    tab.shot("tasks")

    # A running task after a failed attempt: its progress and the earlier traceback.
    page.click(f'tr[data-task-id="{ids["running"]}"] a.task-link')
    expect(page.locator("#status")).to_have_attribute("data-status", "running")
    expect(page.locator("#progress-section")).to_be_visible()
    expect(page.locator("#progress-message")).to_have_text(
        "resized 148 of 240 images of summer-2024"
    )
    expect(page.locator("#progress-percent")).to_have_text("62%")
    expect(page.locator("#attempts")).to_have_text("2")
    expect(page.locator("#error-heading")).to_have_text("Error of an earlier attempt")
    expect(page.locator("#traceback")).to_contain_text("TimeoutError: object storage")
    expect(page.locator("form#cancel")).to_have_count(1)
    tab.shot("task")

    tab.open(showcase.server, task_path(ids["failed_report"]))
    expect(page.locator("#status")).to_have_attribute("data-status", "failed")
    expect(page.locator("#progress-section")).to_be_hidden()
    expect(page.locator("#error")).to_have_text(
        "ValueError: report 'ledger-reconciliation': the ledger returned -1 rows"
    )
    expect(page.locator("#error-heading")).to_have_text("Error")
    expect(page.locator("#traceback-heading")).to_have_text("Traceback")
    expect(page.locator("#traceback")).to_contain_text("in _load_rows")
    expect(page.locator("form#requeue")).to_have_count(1)
    tab.shot("task-failed")

    # Purge asks which tasks, then how many; "Keep them" removes nothing.
    before = showcase.queue.stats()
    page.click("#nav-overview")
    page.click('a[data-action="purge"][data-queue="emails"]')
    expect(page.locator("body")).to_have_attribute("data-page", "purge")
    expect(page.locator("#purge-choices a[data-purge-status]")).to_have_count(5)
    tab.shot("purge-choices")
    page.click('#purge-choices a[data-purge-status="finished"]')
    (emails,) = [s for s in before if s.queue == "emails"]
    finished = emails.succeeded + emails.failed + emails.cancelled
    expect(page.locator("#purge-count")).to_have_text(str(finished))
    expect(page.locator("#purge-submit")).to_be_visible()
    tab.shot("purge")
    page.click("#purge-cancel")
    expect(page.locator("body")).to_have_attribute("data-page", "tasks")
    assert showcase.queue.stats() == before


def test_a_token_needs_the_login_form(showcase: Store, sessions: Sessions, tab: Tab) -> None:
    server = sessions.web.web(showcase.url, "--token", TOKEN)
    page = tab.open(server, "/tasks?queue=emails")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Ftasks%3Fqueue%3Demails$"))
    expect(page.locator("body")).to_have_attribute("data-page", "login")
    expect(page.locator("form#login")).to_be_visible()
    expect(page.locator("#counts, #tasks, #nav-tasks")).to_have_count(0)
    # Styled by the one file served without the token.
    expect(page.locator("header")).to_have_css("background-color", "rgb(29, 35, 42)")
    tab.shot("login")

    page.fill("#token", "not-the-token")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text(
        "That token is not the one this dashboard was started with."
    )
    expect(page.locator("body")).to_have_attribute("data-page", "login")
    expect(page.locator("#tasks")).to_have_count(0)

    page.fill("#token", TOKEN)
    page.click("#login-submit")
    expect(page.locator("body")).to_have_attribute("data-page", "tasks")
    expect(page).to_have_url(server.origin + "/tasks?queue=emails")
    page.click("#nav-overview")
    expect(page.locator("#counts tr[data-queue]")).to_have_count(3)
    # The page's own requests carry the login too: the counts refresh.
    counted = page.get_attribute("#refreshed", "data-counted-at")
    page.wait_for_function(
        "before => document.getElementById('refreshed').dataset.countedAt !== before",
        arg=counted,
        timeout=LIVE,
    )

    page.click("form#logout button")
    expect(page.locator("body")).to_have_attribute("data-page", "login")
    expect(page.locator("#flash")).to_have_text("Logged out.")
    tab.open(server, "/")
    expect(page.locator("body")).to_have_attribute("data-page", "login")


def test_read_only_shows_no_action(showcase: Store, sessions: Sessions, tab: Tab) -> None:
    server = sessions.web.web(showcase.url, "--read-only")
    ids = showcase.ids
    # Each page, and the actions it offers on a dashboard that may act.
    pages = {
        "/": ['form[data-action="requeue-failed"]', 'a[data-action="purge"]'],
        "/tasks?queue=reports&status=failed": ["form#requeue-failed", "#purge-link"],
        "/tasks?queue=emails": ["#purge-link"],
        task_path(ids["failed_report"]): ["form#requeue"],
        task_path(ids["running"]): ["form#cancel"],
        task_path(ids["cancelled"]): ["form#requeue"],
    }
    assert showcase.status(ids["cancelled"]) is TaskStatus.CANCELLED
    page = tab.page
    for path, actions in pages.items():
        tab.open(showcase.server, path)
        for selector in actions:
            expect(page.locator(selector).first).to_be_visible()
        expect(page.locator("#read-only")).to_have_count(0)

        tab.open(server, path)
        expect(page.locator("body")).to_have_attribute("data-read-only", "true")
        expect(page.locator("#read-only")).to_be_visible()
        for selector in actions:
            expect(page.locator(selector)).to_have_count(0)
        expect(page.locator("form")).to_have_count(0)
        expect(page.locator("button")).to_have_count(0)
        expect(page.locator("[data-action], #actions, #purge-link")).to_have_count(0)
    answer = page.goto(server.origin + "/queues/emails/purge")
    assert answer is not None and answer.status == 403
    expect(page.locator("#error-message")).to_contain_text("read-only")
