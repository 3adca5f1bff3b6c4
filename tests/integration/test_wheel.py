"""The built wheel carries everything sitq loads at run time (the SQL backends' ``.sql`` files,
the dashboard's templates and static files, the Django app's templates and migration, the pytest
plugin and its entry point): installed, not editable, into a fresh virtualenv, it runs a task on
SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
import venv
import zipfile
from pathlib import Path

from tests.conftest import drop_postgres_schema, with_query
from tests.services import postgres_dsn, require

REPO = Path(__file__).resolve().parents[2]

_TASKS = """
def add(x: int, y: int) -> int:
    return x + y
"""

_SCRIPT = """
import asyncio
import sys

import sitq
from sitq import AsyncWorker, TaskQueue

import wheel_tasks

assert sitq.__file__.startswith(sys.prefix), sitq.__file__


async def main() -> None:
    for url in sys.argv[1:]:
        async with TaskQueue(url) as queue:
            task_id = await queue.enqueue(wheel_tasks.add, 2, 3)
            async with AsyncWorker(queue.backend, poll_interval=0.2):
                print(url.split(":")[0], await queue.get_value(task_id, timeout=30))


asyncio.run(main())
"""


async def test_the_installed_wheel_runs_a_task_on_sqlite_and_postgres(tmp_path: Path) -> None:
    dsn = postgres_dsn()
    require("postgres", dsn)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
        check=True,
        env=env,
        timeout=300,
    )
    (wheel,) = wheels.glob("sitq-*.whl")
    with zipfile.ZipFile(wheel) as built:
        names = set(built.namelist())
        entry_points = built.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    dashboard = REPO / "src" / "sitq" / "web"
    for folder in ("templates", "static"):
        shipped = {f"sitq/web/{folder}/{p.name}" for p in (dashboard / folder).iterdir()}
        assert shipped and shipped <= names, sorted(shipped - names)
    # The Django app's templates and migration, which Django finds as files in the package.
    django_app = REPO / "src" / "sitq" / "contrib" / "django"
    shipped = {
        f"sitq/contrib/django/{p.relative_to(django_app).as_posix()}"
        for folder in ("templates", "migrations")
        for p in (django_app / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert len(shipped) >= 4 and shipped <= names, sorted(shipped - names)
    # The pytest plugin is a top-level module beside the package, found by its entry point.
    assert "_sitq_pytestplugin.py" in names
    assert "[pytest11]\nsitq = _sitq_pytestplugin" in entry_points, entry_points
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv" / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{wheel}[postgres]"],
        check=True,
        env=env,
        timeout=300,
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "wheel_tasks.py").write_text(_TASKS)
    (run_dir / "main.py").write_text(textwrap.dedent(_SCRIPT))
    schema = "w_" + uuid.uuid4().hex[:16]
    try:
        done = subprocess.run(
            [
                str(python),
                "main.py",
                f"sqlite:///{tmp_path / 'wheel.db'}",
                with_query(dsn, schema=schema),
            ],
            cwd=run_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        await drop_postgres_schema(dsn, schema)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["sqlite", "5", "postgresql", "5"]
