"""The pytest plugin: its fixtures work with pytest-asyncio in auto and strict mode and without
it, it loads through the ``pytest11`` entry point, and a run that uses none of its fixtures
imports nothing of sitq."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sitq import SyncTaskQueue, TaskQueue
from sitq.testing import FakeClock, SyncTestQueue, TestQueue, drain
from tests.testing import tasks
from tests.testing.plugin_runs import counts, require_entry_point, run_pytest, write

_TASKS = """
    def add(x, y):
        return x + y
"""

_ASYNC_TESTS = """
    import pytest
    from sitq.testing import drain

    import tasks


    {mark}async def test_async_queue(sitq_queue, sitq_clock):
        assert sitq_queue.clock is sitq_clock
        later = await sitq_queue.enqueue_in(60, tasks.add, 1, 2)
        assert await drain(sitq_queue) == []
        sitq_clock.advance(60)
        (result,) = await drain(sitq_queue)
        assert result.task_id == later
        assert await sitq_queue.get_value(later) == 3
"""

_SYNC_TESTS = """
    from sitq.testing import drain

    import tasks


    def test_sync_queue(sitq_sync_queue, sitq_clock):
        assert sitq_sync_queue.clock is sitq_clock
        task_id = sitq_sync_queue.enqueue(tasks.add, 2, 3)
        (result,) = drain(sitq_sync_queue)
        assert sitq_sync_queue.get_value(task_id) == 5


    def test_clock_override_reaches_the_queues(sitq_queue, sitq_sync_queue, sitq_clock):
        assert sitq_queue.clock is sitq_clock is sitq_sync_queue.clock
"""


def _project(tmp_path: Path, ini: str, mark: str = "") -> Path:
    write(
        tmp_path,
        {
            "pytest.ini": ini,
            "tasks.py": _TASKS,
            "test_async.py": _ASYNC_TESTS.format(mark=mark),
            "test_sync.py": _SYNC_TESTS,
        },
    )
    return tmp_path


def test_the_fixtures_work_under_pytest_asyncio_auto_mode(tmp_path: Path) -> None:
    require_entry_point()
    root = _project(
        tmp_path,
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n",
    )
    code, output = run_pytest(root)
    assert code == 0 and counts(output) == {"passed": 3}, output


def test_the_fixtures_work_under_pytest_asyncio_strict_mode(tmp_path: Path) -> None:
    require_entry_point()
    root = _project(
        tmp_path,
        "[pytest]\nasyncio_mode = strict\nasyncio_default_fixture_loop_scope = function\n",
        mark="@pytest.mark.asyncio\n    ",
    )
    code, output = run_pytest(root)
    assert code == 0 and counts(output) == {"passed": 3}, output


def test_the_sync_fixtures_work_without_pytest_asyncio(tmp_path: Path) -> None:
    require_entry_point()
    root = _project(tmp_path, "[pytest]\n")
    code, output = run_pytest(root, "-p", "no:asyncio", "test_sync.py")
    assert code == 0 and counts(output) == {"passed": 2}, output


def test_the_plugin_loads_by_its_entry_point_and_imports_nothing_of_sitq(tmp_path: Path) -> None:
    require_entry_point()
    write(
        tmp_path,
        {
            "pytest.ini": "[pytest]\n",
            "test_plain.py": """
                import sys


                def test_plain(request):
                    plugin = request.config.pluginmanager.get_plugin("sitq")
                    assert plugin is not None and plugin.__name__ == "_sitq_pytestplugin"
                    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "sitq")
                    assert loaded == [], loaded
            """,
        },
    )
    code, output = run_pytest(tmp_path)
    assert code == 0 and counts(output) == {"passed": 1}, output
    # And -p no:sitq turns it off: its fixtures are gone.
    write(tmp_path, {"test_uses.py": "def test_uses(sitq_queue):\n    pass\n"})
    code, output = run_pytest(tmp_path, "-p", "no:sitq", "test_uses.py")
    assert code != 0 and "fixture 'sitq_queue' not found" in output, output


def test_the_plugin_is_active_in_this_suite_too(
    request: pytest.FixtureRequest,
    sitq_queue: TestQueue,
    sitq_sync_queue: SyncTestQueue,
    sitq_clock: FakeClock,
) -> None:
    """The project's own run loads the plugin beside tests/conftest.py: no fixture clashes."""
    plugin = request.config.pluginmanager.get_plugin("sitq")
    assert plugin is sys.modules["_sitq_pytestplugin"]
    assert isinstance(sitq_queue, TaskQueue) and isinstance(sitq_sync_queue, SyncTaskQueue)
    assert sitq_queue.clock is sitq_clock is sitq_sync_queue.clock
    task_id = sitq_sync_queue.enqueue(tasks.add, 4, 5)
    assert len(drain(sitq_sync_queue)) == 1
    assert sitq_sync_queue.get_value(task_id) == 9
