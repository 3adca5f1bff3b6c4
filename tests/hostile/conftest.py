"""The figures the hostile-input tests report (corrupted records per backend: good tasks,
executions, results, records failed or skipped), printed at the end of the test run."""

from __future__ import annotations

from typing import Any

import pytest

FIGURES: list[str] = []


def report(line: str) -> None:
    """Keep a line for the summary (and print it, for ``pytest -s``)."""
    FIGURES.append(line)
    print(line)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if FIGURES:
        terminalreporter.section("hostile input: corrupted records")
        for line in FIGURES:
            terminalreporter.write_line(line)
