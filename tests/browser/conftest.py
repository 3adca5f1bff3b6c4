"""Fixtures of the browser tests: the dashboard driven in a real Chromium.

The shared fixtures live as long as this folder's tests (package scope), not the whole pytest
session: Playwright's sync API keeps an event loop running in the main thread while it is
started, and the async tests that follow need that thread free.

- ``browser``: one headless Chromium for the folder's tests, the system's own (``SITQ_CHROMIUM``,
  else ``chromium`` or ``chromium-browser`` on PATH; ``python scripts/browser.py`` installs it),
  driven through the ``playwright`` package. No browser is ever downloaded. Without it the tests
  are skipped, or fail when ``CI`` is set.
- ``tab``: a fresh page (its own cookies) for one test. It records every dialog (``alert``,
  ``confirm``, ...), uncaught script error, console error and failed request of a page's
  assets or API calls; any of them fails the test.
- ``showcase``: a SQLite store that looks like a shop's (queues ``emails``, ``reports`` and
  ``images``; tasks in every state; a live worker running two tasks that report progress; cron
  schedules), served by ``sitq web``. Tests that only read share it.
- ``ops``: another SQLite store with a worker on the queues the action tests use (one queue
  each), served by ``sitq web``.
- ``sessions``: the folder's subprocesses (``sitq web`` and ``sitq worker``), all killed once
  its tests are done; a test that needs a server of its own (``--token``, ``--read-only``)
  starts it here.
- ``screenshots``: where pages are saved as PNG: ``SITQ_SCREENSHOTS`` if set (``scripts/
  screenshots`` sets it to docs/images), else a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from sitq import FixedBackoff, RetryPolicy, SyncTaskQueue, TaskStatus
from tests.browser import tasks
from tests.conftest import WorkerProcesses, drop_postgres_schema, with_query
from tests.services import absent, postgres_dsn, require, require_module
from tests.web.server import Processes, WebServer
from tests.web.server import sitq_info as info_table

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, Response

CHROMIUM_ENV = "SITQ_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser")
"""Where the browser is looked for; scripts/browser.py looks in the same places."""
INSTALL_HINT = (
    "install it with `python scripts/browser.py` (as root on Debian/Ubuntu it runs "
    "`apt-get install -y --no-install-recommends chromium`), or point SITQ_CHROMIUM at a "
    "Chromium or Chrome executable"
)
SCREENSHOTS_ENV = "SITQ_SCREENSHOTS"
VIEWPORT = {"width": 1280, "height": 800}

LIVE = 30_000
"""Milliseconds a test waits for the page to show a change it caused (the page polls every
2 s, counts are up to 2 s old, a worker notices a cancel at its next heartbeat)."""

OPS_QUEUES = ("requeue-one", "requeue-all", "purge", "cancel", "progress", "escaping")
"""The queues of the ``ops`` store's worker: one per action test."""


def wait_for(condition: Callable[[], object], *, message: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(0.05)


def find_chromium() -> str:
    """The browser's executable, or a skip (a failure in CI) that says how to install it."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        found = shutil.which(configured)
        if found is None:
            absent(f"{CHROMIUM_ENV}={configured} is not an executable file: {INSTALL_HINT}")
        return found
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found is not None:
            return found
    absent(
        f"no Chromium for the browser tests: none of {', '.join(CHROMIUM_NAMES)} is on PATH "
        f"and {CHROMIUM_ENV} is not set; {INSTALL_HINT}"
    )


# -- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the browser tests."""
    require_module("playwright.sync_api")
    from playwright.sync_api import Error, expect, sync_playwright

    executable = find_chromium()
    expect.set_options(timeout=LIVE)
    driver = sync_playwright().start()
    try:
        try:
            launched = driver.chromium.launch(executable_path=executable, headless=True)
        except Error as exc:
            pytest.fail(f"Chromium at {executable} did not start: {exc}", pytrace=False)
        try:
            yield launched
        finally:
            launched.close()
    finally:
        driver.stop()


@pytest.fixture(scope="package")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the tests save their screenshots in."""
    configured = os.environ.get(SCREENSHOTS_ENV)
    if configured:
        path = Path(configured).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return tmp_path_factory.mktemp("screenshots")


@dataclass
class Tab:
    """One browser page and what went wrong on it."""

    page: Page
    screenshots: Path
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, server: WebServer, path: str = "/") -> Page:
        """Go to ``path`` on ``server`` and return the page."""
        self.page.goto(server.origin + path)
        return self.page

    def shot(self, name: str) -> Path:
        """Save the whole page as ``<name>.png`` in the screenshot directory."""
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def no_reload_marker(self) -> None:
        """Mark the document, so that :meth:`reloaded` tells whether it was loaded again."""
        self.page.evaluate("window.sitqTestMarker = true")

    def reloaded(self) -> bool:
        return not self.page.evaluate("window.sitqTestMarker === true")

    def problems(self) -> list[str]:
        return [f"a dialog opened: {d}" for d in self.dialogs] + self.errors


@pytest.fixture
def tab(browser: Browser, screenshots: Path) -> Iterator[Tab]:
    """A new page, its own cookies; the test fails if a dialog opened or the page broke."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    context.set_default_timeout(LIVE)
    page = context.new_page()
    opened = Tab(page, screenshots)

    def on_dialog(dialog: Dialog) -> None:
        opened.dialogs.append(f"{dialog.type}: {dialog.message!r} on {page.url}")
        dialog.dismiss()

    def on_page_error(error: Exception) -> None:
        opened.errors.append(f"uncaught script error on {page.url}: {error}")

    def on_console(message: ConsoleMessage) -> None:
        # A failed load says so here too; documents are checked by the tests themselves, and
        # every other request by on_response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            opened.errors.append(f"console error on {page.url}: {message.text}")

    def on_response(response: Response) -> None:
        if response.request.resource_type != "document" and response.status >= 400:
            opened.errors.append(
                f"{response.request.method} {response.url} answered {response.status}"
            )

    page.on("dialog", on_dialog)
    page.on("pageerror", on_page_error)
    page.on("console", on_console)
    page.on("response", on_response)
    try:
        yield opened
    finally:
        context.close()
    problems = opened.problems()
    assert not problems, "the browser saw:\n" + "\n".join(problems)


# -- processes -----------------------------------------------------------------------------------


@dataclass
class Sessions:
    """The browser tests' ``sitq web`` and ``sitq worker`` subprocesses."""

    web: Processes
    workers: WorkerProcesses

    def worker(self, url: str, queues: tuple[str, ...], concurrency: int) -> None:
        self.workers.start(
            url,
            queues=queues,
            concurrency=concurrency,
            lease=3.0,  # a heartbeat a second: progress and cancels show soon
            extra=("--import", "tests.browser.tasks"),
        )


@pytest.fixture(scope="package")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sessions]:
    """Subprocesses that live as long as the browser tests; all killed at their end."""
    started = Sessions(
        Processes(tmp_path_factory.mktemp("web")),
        WorkerProcesses(tmp_path_factory.mktemp("workers")),
    )
    try:
        yield started
    finally:
        started.web.kill_all()
        started.workers.kill_all()


def sitq_info(url: str) -> dict[str, int]:
    """The counts ``sitq info URL`` prints, as ``{"<queue>:<state>": n}``."""
    return {
        f"{queue}:{state}": n
        for queue, states in info_table(url).items()
        for state, n in states.items()
    }


# -- the stores ----------------------------------------------------------------------------------


@dataclass
class Store:
    """A store, a queue on it, and the ``sitq web`` that serves it."""

    url: str
    queue: SyncTaskQueue
    server: WebServer
    directory: Path
    ids: dict[str, str] = field(default_factory=dict)

    def status(self, task_id: str) -> TaskStatus | None:
        info = self.queue.get_task(task_id)
        return None if info is None else info.status

    def wait_status(self, task_id: str, status: TaskStatus) -> None:
        wait_for(
            lambda: self.status(task_id) is status, message=f"task {task_id} to be {status.value}"
        )

    def wait_progress(self, task_id: str, message: str) -> None:
        def shown() -> bool:
            info = self.queue.get_task(task_id)
            return info is not None and info.progress_message == message

        wait_for(shown, message=f"task {task_id} to report {message!r}")


def _populate_shop(
    queue: SyncTaskQueue, server: WebServer, directory: Path, ids: dict[str, str]
) -> None:
    """Tasks in every state on three queues; the worker must be serving them."""
    emails = queue.options(queue="emails")
    reports = queue.options(queue="reports")
    images = queue.options(queue="images")
    finished = [
        emails.enqueue(tasks.send_email, f"{name}@example.com", subject)
        for name, subject in [
            ("ada", "Your order #1041 has shipped"),
            ("grace", "Welcome to the shop"),
            ("linus", "Your order #1042 has shipped"),
            ("barbara", "Password reset"),
            ("ken", "Your invoice for March"),
            ("margaret", "Your order #1043 has shipped"),
            ("dennis", "We miss you: 10% off"),
            ("frances", "Your order #1044 has shipped"),
            ("edsger", "Welcome to the shop"),
            ("radia", "Password reset"),
            ("john", "Your order #1045 has shipped"),
            ("alan", "Your invoice for March"),
        ]
    ]
    ids["failed_email"] = emails.enqueue(tasks.send_email, "old-address@shop.invalid", "Receipt")
    finished.append(ids["failed_email"])
    finished.append(emails.enqueue(tasks.send_email, "nobody@mail.invalid", "Welcome"))
    finished += [
        reports.enqueue(tasks.build_report, name, rows)
        for name, rows in [
            ("daily-sales", 1320),
            ("stock-levels", 214),
            ("refunds", 17),
            ("daily-sales", 1288),
        ]
    ]
    ids["failed_report"] = reports.enqueue(tasks.build_report, "ledger-reconciliation", -1)
    finished.append(ids["failed_report"])

    def all_finished_and_counted() -> bool:
        # Read through the dashboard: each reading samples the worker's counters, so the
        # throughput shows these tasks.
        data = server.get("/api/overview").json()
        done = sum(q["succeeded"] + q["failed"] for q in data["queues"])
        return done == len(finished) and data["throughput"]["windows"][-1]["finished"] >= done

    wait_for(all_finished_and_counted, message="the shop's first tasks to finish and be counted")

    # Two running tasks fill the worker (concurrency 2), the first after a failed attempt.
    release = str(directory / "release-images")
    flaky = images.options(retry=RetryPolicy(max_attempts=3, backoff=FixedBackoff(0.1)))
    ids["running"] = flaky.enqueue(
        tasks.resize_images, "summer-2024", 240, release, str(directory / "storage-hiccup")
    )
    ids["running_2"] = images.enqueue(tasks.resize_images, "team-offsite", 85, release)
    for key in ("running", "running_2"):
        wait_for(
            lambda key=key: (
                (info := queue.get_task(ids[key])) is not None
                and info.status is TaskStatus.RUNNING
                and info.progress is not None
            ),
            message="the image tasks to run and report progress",
        )
    # Left waiting behind them, or due later.
    for album, count in [("catalogue", 512), ("blog", 36), ("returns", 12)]:
        images.enqueue(tasks.resize_images, album, count, release)
    for name in ("ada", "grace", "linus"):
        emails.enqueue(tasks.send_email, f"{name}@example.com", "Spring newsletter")
    now = datetime.now(UTC)
    reports.enqueue_at(now + timedelta(hours=6), tasks.build_report, "monthly-revenue", 31)
    reports.enqueue_at(now + timedelta(hours=9), tasks.build_report, "inventory", 440)
    emails.enqueue_at(now + timedelta(hours=2), tasks.send_email, "ada@example.com", "Reminder")
    ids["cancelled"] = reports.enqueue_at(
        now + timedelta(hours=1), tasks.build_report, "quarterly-tax", 90
    )
    queue.cancel(ids["cancelled"])
    queue.cancel(emails.enqueue_at(now + timedelta(hours=1), tasks.send_email, "x@example.com", ""))
    queue.add_cron(
        "nightly-sales",
        "30 2 * * *",
        tasks.build_report,
        args=("daily-sales", 0),
        queue="reports",
    )
    queue.add_cron(
        "weekly-digest",
        "0 8 * * 1",
        tasks.send_email,
        args=("team@example.com", "Weekly digest"),
        queue="emails",
    )


@pytest.fixture(scope="package")
def showcase(sessions: Sessions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """The shop's store (see the module docstring) and its ``sitq web``: for reading only."""
    directory = tmp_path_factory.mktemp("showcase")
    url = f"sqlite:///{directory / 'shop.db'}"
    queue = SyncTaskQueue(url)
    queue.connect()  # creates the store
    try:
        server = sessions.web.web(url)
        server.get("/api/queues")  # the throughput's first sample, before the worker starts
        sessions.worker(url, ("emails", "reports", "images"), concurrency=2)
        ids: dict[str, str] = {}
        _populate_shop(queue, server, directory, ids)
        yield Store(url, queue, server, directory, ids)
    finally:
        queue.close()


@pytest.fixture(scope="package")
def ops(sessions: Sessions, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A store whose tasks the action tests change, each on a queue of its own, with a worker
    on those queues and ``sitq web``."""
    directory = tmp_path_factory.mktemp("ops")
    url = f"sqlite:///{directory / 'ops.db'}"
    queue = SyncTaskQueue(url)
    queue.connect()
    try:
        sessions.worker(url, OPS_QUEUES, concurrency=4)
        server = sessions.web.web(url)
        yield Store(url, queue, server, directory)
    finally:
        queue.close()


@pytest.fixture
def postgres_store(tmp_path: Path) -> Iterator[Store]:
    """A PostgreSQL schema of the test's own, with a worker on queue ``billing`` and
    ``sitq web``; the processes are killed and the schema dropped afterwards."""
    require_module("asyncpg")
    dsn = postgres_dsn()
    require("postgres", dsn)
    schema = "t_" + uuid.uuid4().hex[:16]
    url = with_query(dsn, schema=schema)
    web = Processes(tmp_path)
    workers = WorkerProcesses(tmp_path)
    queue = SyncTaskQueue(url)
    try:
        queue.connect()  # creates the schema
        workers.start(
            url,
            queues=("billing",),
            concurrency=2,
            lease=3.0,
            extra=("--import", "tests.browser.tasks"),
        )
        yield Store(url, queue, web.web(url), tmp_path)
    finally:
        queue.close()
        web.kill_all()
        workers.kill_all()
        # In a thread of its own: the browser's driver keeps an event loop in this one.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, drop_postgres_schema(dsn, schema)).result()


SAME_COUNTS = """expected => {
  const shown = {};
  document.querySelectorAll("[data-count]").forEach(c => {
    shown[c.dataset.count] = Number(c.textContent);
  });
  const keys = Object.keys(expected);
  return keys.length === Object.keys(shown).length && keys.every(k => shown[k] === expected[k]);
}"""
"""A page function: whether the overview shows exactly the counts it is given."""


def marker(store: Store) -> str:
    """A path no task has used yet (for ``fail_once`` and the like)."""
    return str(store.directory / f"marker-{uuid.uuid4().hex}")


def count_cells(page: Page) -> dict[str, int]:
    """Every count of the overview, as ``{"<queue>:<state>": n}``."""
    found: dict[str, Any] = page.eval_on_selector_all(
        "[data-count]",
        "cells => Object.fromEntries(cells.map(c => [c.dataset.count, Number(c.textContent)]))",
    )
    return {key: int(value) for key, value in found.items()}


def text_of(page: Page, selector: str) -> str:
    """The text of the one element ``selector`` finds (as ``textContent``: what it says)."""
    return str(page.locator(selector).text_content())
