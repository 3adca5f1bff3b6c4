"""docs/tutorial.md runs as it is written: every block of it, in order, in a fresh directory.

Files (```python title="tasks.py"```) are written, commands (```bash```) are run with ``bash``,
the worker the tutorial starts runs in the background until the end, and every output the page
shows (```text```) is checked against what the command before it printed, or, for the worker's
log lines, against the worker's output, with ids, times, host names and durations left out of
the comparison. Only the install block is not run: sitq is installed already, and the test
checks that the block installs it from the clone as the page says.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import sitq
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "docs" / "tutorial.md"
_BLOCK = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```[ \t]*$", re.S | re.M)
_NORMAL = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<id>"),
    # A time is left out, so a line the page shows without its time still matches.
    (re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[.,]\d+)?(?:[+-]\d\d:\d\d)?"), ""),
    (re.compile(r"\b[\w.-]+:\d+:[0-9a-f]{8}\b"), "<worker>"),
    (re.compile(r"\b\d+(?:\.\d+)? s\b"), "<n> s"),
    (re.compile(r"\b(?:asyncio|uvloop) loop\b"), "<loop> loop"),
    (re.compile(r"\s+"), " "),
]


@dataclass
class Block:
    lang: str
    title: str | None
    text: str


def _blocks() -> list[Block]:
    found = []
    for lang, info, text in _BLOCK.findall(TUTORIAL.read_text()):
        title = re.search(r'title="([^"]+)"', info)
        found.append(Block(lang, title.group(1) if title else None, text))
    return found


def _normal(line: str) -> str:
    for pattern, replacement in _NORMAL:
        line = pattern.sub(replacement, line)
    return line.strip()


def _assert_shown(shown: str, output: str, where: str) -> None:
    """Each line the page shows is a line of ``output``, but for the lines that stand for
    something left out (``...``) and progress figures, which depend on timing."""
    printed = {_normal(line) for line in output.splitlines()}
    for line in shown.splitlines():
        if not line.strip() or "..." in line or re.match(r"\s*\d+%", line):
            continue
        assert _normal(line) in printed, f"{where}: the page shows {line!r}; got:\n{output}"


def _shims(directory: Path) -> dict[str, str]:
    """An environment whose ``python`` and ``sitq`` are this interpreter and this sitq."""
    directory.mkdir()
    for name, command in (("python", ""), ("sitq", " -m sitq")):
        shim = directory / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}"{command} "$@"\n')
        shim.chmod(0o755)
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


async def test_every_block_of_the_tutorial_runs_as_shown(tmp_path: Path) -> None:
    blocks = _blocks()
    install = blocks[0]
    assert install.lang == "bash" and "pip install ." in install.text, install.text
    assert install.text.splitlines()[-1] == "sitq --version"
    env = _shims(tmp_path / "bin")
    work = tmp_path / "tutorial"
    work.mkdir()

    worker: subprocess.Popen[str] | None = None
    worker_log = tmp_path / "worker.log"
    last_output: str | None = None
    worker_lines: list[str] = []  # what the page shows of the worker's output
    try:
        for block in blocks:
            if block is install:
                version = subprocess.run(
                    ["sitq", "--version"], env=env, capture_output=True, text=True, check=True
                )
                assert version.stdout.strip() == f"sitq {sitq.__version__}"
                last_output = version.stdout
            elif block.title is not None:
                (work / block.title).write_text(block.text)
                last_output = None
            elif block.lang == "bash" and block.text.startswith("sitq worker"):
                assert worker is None, "the tutorial starts one worker"
                with worker_log.open("w") as log:
                    worker = subprocess.Popen(
                        ["bash", "-c", f"exec {block.text}"],
                        cwd=work,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        text=True,
                        start_new_session=True,
                    )
                await wait_until(
                    lambda: "started on" in worker_log.read_text(),
                    timeout=30,
                    message="the tutorial's worker to start",
                )
                last_output = None
            elif block.lang == "bash":
                done = subprocess.run(
                    ["bash", "-ec", block.text],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
                assert done.returncode == 0, f"{block.text}\n{done.stdout}{done.stderr}"
                last_output = done.stdout + done.stderr
            elif block.lang == "text" and last_output is not None:
                _assert_shown(block.text, last_output, "after a command")
                last_output = None
            elif block.lang == "text":
                worker_lines.append(block.text)  # checked once the worker has stopped
            else:
                assert block.lang == "python", f"a block the test cannot run: {block}"
        assert worker is not None
        os.kill(worker.pid, signal.SIGINT)
        await asyncio.to_thread(worker.wait, 60)
        assert worker_lines, "the page shows what the worker prints"
        for shown in worker_lines:
            _assert_shown(shown, worker_log.read_text(), "the worker's output")
    finally:
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
