"""The CI guard (tests/ci_guard.py): with ``CI`` set, a skipped test fails the run and is named;
without it, a skip is a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SKIPPING = """
import pytest


def test_runs():
    assert True


def test_skips_while_running():
    pytest.skip("a service is missing")


@pytest.mark.skipif(True, reason="skipped by a mark")
def test_skips_by_a_mark():
    pass
"""
SKIPPING_MODULE = """
import pytest

pytest.importorskip("no_such_module_anywhere")


def test_never_runs():
    pass
"""


def _pytest(directory: Path, *files: str, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *("-p", "tests.ci_guard", "-p", "no:cacheprovider", "-q", "-rs"),
            *("-o", "asyncio_default_fixture_loop_scope=function", *files),
        ],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def tiny_suite(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_tiny.py").write_text(SKIPPING)
    (tmp_path / "test_module.py").write_text(SKIPPING_MODULE)
    return tmp_path


def test_without_ci_a_skip_is_a_skip(tiny_suite: Path) -> None:
    done = _pytest(tiny_suite, "test_tiny.py", "test_module.py", ci=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 3 skipped" in done.stdout


def test_with_ci_every_skip_fails_the_run_and_is_named(tiny_suite: Path) -> None:
    done = _pytest(tiny_suite, "test_tiny.py", ci=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 1 passed, 1 error" in done.stdout
    for name, reason in [
        ("test_skips_while_running", "a service is missing"),
        ("test_skips_by_a_mark", "skipped by a mark"),
    ]:
        assert f"test_tiny.py::{name} was skipped, and the CI environment variable is set" in (
            done.stdout
        )
        assert reason in done.stdout
    # A module skipped while it is collected is a collection error.
    done = _pytest(tiny_suite, "test_tiny.py", "test_module.py", ci=True)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "ERROR collecting test_module.py" in done.stdout
    assert "no_such_module_anywhere" in done.stdout
