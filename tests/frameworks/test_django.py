"""examples/django_project's own tests, `python manage.py test`, run by Django's test runner on
SQLite and on PostgreSQL (each in a subprocess, as a developer runs them).

On PostgreSQL the tasks live in Django's test database and enqueueing joins the view's
transaction; on SQLite they live in a sitq file and are enqueued on commit. Every test named
below must have run and passed on that database: one skipped or missing is a failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO
from tests.services import postgres_dsn, require, require_module

PROJECT = REPO / "examples" / "django_project"

BOTH = [
    "test_a_committed_order_leaves_exactly_one_task",
    "test_a_rolled_back_order_leaves_no_task",
    "test_with_a_url_the_task_is_enqueued_on_commit",
    "test_the_management_command_runs_a_task_to_success",
    "test_process_workers_are_refused",
    "test_the_admin_lists_tasks_and_shows_their_status",
    "test_the_admin_is_read_only",
    "test_staff_need_the_view_permission",
    "test_mistakes_in_the_setting_are_named",
]
SAME_TRANSACTION = "test_on_postgresql_the_task_is_inserted_in_the_views_transaction"


async def _drop_database(dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_the_django_project_passes_its_tests(database: str, tmp_path: Path) -> None:
    require_module("django")
    require_module("psycopg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOP_", "SITQ_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    test_database = None
    if database == "postgres":
        dsn = postgres_dsn()
        require("postgres", dsn)
        name = "sitq_shop_" + uuid.uuid4().hex[:12]
        test_database = f"test_{name}"
        env["SHOP_DATABASE"] = "postgres"
        env["SHOP_POSTGRES_URL"] = urlsplit(dsn)._replace(path=f"/{name}", query="").geturl()
        expected = [*BOTH, SAME_TRANSACTION]
    else:
        env["SHOP_DB_NAME"] = str(tmp_path / "shop.sqlite3")
        env["SHOP_TEST_DB"] = str(tmp_path / "test-shop.sqlite3")
        env["SHOP_SITQ_URL"] = f"sqlite:///{tmp_path / 'tasks.db'}"
        expected = BOTH
    try:
        done = subprocess.run(
            [sys.executable, "manage.py", "test", "--noinput", "-v", "2"],
            cwd=PROJECT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        if test_database is not None:
            asyncio.run(_drop_database(postgres_dsn(), test_database))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    passed = set(re.findall(r"^(test_\w+) \(shop\.tests\.\w+\.\1\) \.\.\. ok$", output, re.M))
    assert set(expected) <= passed, f"not run or not passed: {set(expected) - passed}\n{output}"
    if database == "sqlite":
        assert f"{SAME_TRANSACTION} " in output and "OK (skipped=1)" in output, output
    else:
        assert re.search(r"^OK$", output, re.M), output
