#!/usr/bin/env python3
"""Make sure the browser the dashboard's browser tests (tests/browser/) drive is installed.

Usage:
    python scripts/browser.py          # find Chromium; install it with apt-get where we can
    python scripts/browser.py --check  # only report, never install

The tests drive the system's Chromium through the `playwright` Python package (the `test`
extra); they never download a browser of their own. They find it the same way this script does:

    SITQ_CHROMIUM      the browser's executable, if set (then nothing else is tried)
    otherwise          `chromium`, then `chromium-browser`, on PATH

When none is found and we are root on a system with apt-get (Debian, Ubuntu), this runs
`apt-get install -y --no-install-recommends chromium`, after `apt-get update` when apt does not
know the package yet. Otherwise it says what is missing and the command that installs it.

Exit status: 0 when the browser is there. A missing browser is a failure (exit 1) when the CI
environment variable is set, because the browser tests fail in CI without it; outside CI they
are skipped, so this script only warns and exits 0.

Stdlib only: this runs before the project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

ENV_VAR = "SITQ_CHROMIUM"
NAMES = ("chromium", "chromium-browser")
PACKAGE = "chromium"
INSTALL = ["apt-get", "install", "-y", "--no-install-recommends", PACKAGE]
INSTALL_HINT = (
    f"install it with `{' '.join(INSTALL)}` (as root, Debian/Ubuntu), or point {ENV_VAR} at a "
    "Chromium or Chrome executable"
)


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def find_chromium() -> tuple[str | None, str]:
    """The browser's path (or None) and a sentence saying where it was looked for."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        found = shutil.which(configured)
        if found:
            return found, f"{ENV_VAR}={configured}"
        return None, f"{ENV_VAR}={configured} is not an executable file"
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found, f"`{name}` on PATH"
    return None, f"none of {', '.join(NAMES)} is on PATH (and {ENV_VAR} is not set)"


def version(path: str) -> str:
    """What ``path --version`` says (its first line), or why it says nothing."""
    try:
        done = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"--version failed: {exc}"
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"--version exited with {done.returncode}"


def can_apt_install() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_knows(package: str) -> bool:
    """Whether apt has a candidate version of ``package`` (its lists may be empty)."""
    try:
        done = subprocess.run(
            ["apt-cache", "policy", package],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    for line in done.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Candidate":
            return value.strip() not in ("", "(none)")
    return False


def run(cmd: Sequence[str]) -> int:
    print(f"browser: running {' '.join(cmd)}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        return subprocess.run(list(cmd), stdin=subprocess.DEVNULL, env=env, check=False).returncode
    except OSError as exc:
        print(f"browser: {cmd[0]} could not run: {exc}", flush=True)
        return 127


def install() -> str | None:
    """Install Chromium with apt-get; None on success, else what went wrong."""
    if not apt_knows(PACKAGE):
        code = run(["apt-get", "update"])
        if code != 0:
            return f"apt-get update failed (exit code {code})"
    code = run(INSTALL)
    if code != 0:
        return f"{' '.join(INSTALL)} failed (exit code {code})"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make sure Chromium is there for sitq's browser tests (tests/browser/).",
    )
    parser.add_argument("--check", action="store_true", help="only report; never install")
    args = parser.parse_args(argv)

    path, where = find_chromium()
    problem = None
    if path is None and not os.environ.get(ENV_VAR) and not args.check:
        if can_apt_install():
            problem = install()
            path, where = find_chromium()
        else:
            problem = "not root, or no apt-get: cannot install it here"
    if path is not None:
        print(f"browser: ok ({path}, {where}: {version(path)})", flush=True)
        return 0
    reason = f"{where}" + (f"; {problem}" if problem else "")
    if in_ci():
        print(
            f"browser: FAILED: Chromium not found: {reason}. To fix: {INSTALL_HINT}. CI is set, "
            "and in CI the browser tests fail without it.",
            flush=True,
        )
        return 1
    print(
        f"browser: Chromium not found: {reason}; the browser tests (tests/browser/) will be "
        f"skipped (with CI set they would fail instead). To fix: {INSTALL_HINT}.",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
