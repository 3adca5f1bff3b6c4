"""Running pytest in a child process on a small project, as a user's test run would."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def require_entry_point() -> None:
    """Fail (never skip) when sitq is installed without its ``pytest11`` entry point."""
    if not importlib.metadata.entry_points(group="pytest11", name="sitq"):
        pytest.fail(
            "sitq is installed without its pytest11 entry point 'sitq': reinstall it "
            "(pip install -e '.[all,test]', which scripts/test does when pyproject.toml changes)"
        )


def write(root: Path, files: dict[str, str]) -> None:
    """Write the project's files (text dedented)."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())


def run_pytest(root: Path, *args: str) -> tuple[int, str]:
    """``python -m pytest ARGS`` in ``root``; its exit code and output."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def counts(output: str) -> dict[str, int]:
    """The summary line's counts: ``{"passed": 3, "failed": 1}``."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|error|skipped)", output)}
