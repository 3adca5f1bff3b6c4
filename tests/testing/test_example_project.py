"""examples/testing, a small project testing its sitq tasks with the plugin's fixtures, passes
when pytest runs it the way its users would run it."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.testing.plugin_runs import counts, require_entry_point, run_pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "testing"


def test_the_example_projects_tests_pass(tmp_path: Path) -> None:
    require_entry_point()
    project = tmp_path / "shop-project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    code, output = run_pytest(project, "-v")
    assert code == 0, output
    assert counts(output) == {"passed": 5}, output
