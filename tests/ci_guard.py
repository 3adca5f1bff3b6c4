"""A pytest plugin: when the ``CI`` environment variable is set, every skip is a failure.

A skipped test proves nothing, and in CI everything a test needs (services, programs, Python
packages, Chromium) is there, so a skip there means a promise went
unchecked. Each skip, whether it happens while collecting a module (``importorskip``, a
module-level ``pytest.skip``) or while setting up or running a test, is reported as a failure
that names the test and the reason it gave. Expected failures (``xfail``) are left alone.

``tests/conftest.py`` uses these hooks; another run can load them with ``-p tests.ci_guard``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tests.services import in_ci

__all__ = ["pytest_make_collect_report", "pytest_runtest_makereport", "skip_reason"]


def skip_reason(longrepr: Any) -> str:
    """The text of a skip report's reason (pytest keeps it as ``(path, line, reason)``)."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, _, reason = longrepr
        return f"{reason} (in {path})"
    return str(longrepr)


def _as_failure(report: pytest.CollectReport | pytest.TestReport, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (
        f"{what} was skipped, and the CI environment variable is set, so a skip is a failure: "
        f"{skip_reason(report.longrepr)}"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A test skipped in setup or while running fails instead when CI is set."""
    report = yield
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report, item.nodeid)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A module skipped while it is collected is a collection error instead when CI is set."""
    report = yield
    if in_ci() and report.skipped:
        _as_failure(report, collector.nodeid)
    return report
