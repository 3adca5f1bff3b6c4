"""Break each promise on purpose and show which tests catch it.

    python -m tests.mutants                 # every mutant
    python -m tests.mutants --list          # names and the promise each one breaks
    python -m tests.mutants sqlite-finish-fence redis-pubsub-off   # some of them
    python -m tests.mutants --json out.json

Each mutant is one small change to sitq's source: a piece of text replaced by another. For
each, the runner copies the repository's tracked files into a temporary directory, applies the
change there (the working tree is never touched), and runs the tests that guard the promise with
``PYTHONPATH`` pointing at the copy, so that worker subprocesses run the broken code too. A
mutant is *caught* when at least one of its tests fails; a mutant whose text is no longer found
in the source is reported as *stale*, so a guard cannot pass by the code moving away from it.

Before the mutants, the same tests run once on the unchanged copy: a mutant counts as caught
only if its tests passed there. The exit code is 0 when every mutant was caught, 1 otherwise.
The run needs the services the tests need (``python scripts/services.py``) and takes a while:
it is not part of ``scripts/test``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    """One deliberate breakage: ``old`` replaced by ``new`` in ``path`` (``count`` times)."""

    name: str
    promise: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    count: int = 1
    pytest_args: tuple[str, ...] = field(default=())


@dataclass
class Outcome:
    """What the guarding tests did with one mutant."""

    mutant: Mutant
    verdict: str  # caught, missed, stale, error
    failed: list[str]
    seconds: float
    detail: str = ""


def _copy_tree(dest: Path) -> None:
    """The repository's tracked and untracked-but-not-ignored files, copied to ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = raw.decode()
        src = REPO / rel
        if not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def _apply(root: Path, mutant: Mutant) -> str | None:
    """Apply the mutant in ``root``; the reason it could not be applied, or None."""
    path = root / mutant.path
    text = path.read_text()
    found = text.count(mutant.old)
    if found != mutant.count:
        return f"expected {mutant.count} occurrence(s) of the text in {mutant.path}, found {found}"
    path.write_text(text.replace(mutant.old, mutant.new))
    return None


def _run_tests(
    root: Path, tests: Sequence[str], extra: Sequence[str]
) -> tuple[int, list[str], str]:
    """Run pytest on ``tests`` in ``root``: its exit code, the ids of failed tests and the first
    failure's message (so that a mutant caught for the wrong reason can be told apart)."""
    report = root / "mutant-report.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), str(root)])
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "--maxfail=1",
        f"--junitxml={report}",
        *extra,
        *tests,
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    failed: list[str] = []
    message = ""
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            problem = case.find("failure")
            if problem is None:
                problem = case.find("error")
            if problem is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
                message = message or " ".join((problem.get("message") or "").split())[:160]
        report.unlink()
    elif proc.returncode not in (0, 5):
        message = " ".join((proc.stdout + proc.stderr).split())[-160:]
    return proc.returncode, failed, message


def _check_copy_is_used(root: Path) -> None:
    """Refuse to run if ``import sitq`` would not load the copy's source."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root / "src"), str(root)]))
    out = subprocess.run(
        [sys.executable, "-c", "import sitq; print(sitq.__file__)"],
        cwd=root,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not out.startswith(str(root)):
        raise SystemExit(f"mutants: `import sitq` loads {out}, not the copy in {root}")


def run(mutants: Sequence[Mutant], keep: bool = False) -> list[Outcome]:
    """Run every mutant; print one line per mutant as it ends."""
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="sitq-mutants-") as tmp:
        base = Path(tmp) / "base"
        _copy_tree(base)
        _check_copy_is_used(base)
        # The unchanged code first: all plain selections in one run, each filtered one alone.
        plain = sorted({t for m in mutants if not m.pytest_args for t in m.tests})
        groups = [(tuple(plain), ())] if plain else []
        groups += sorted({(m.tests, m.pytest_args) for m in mutants if m.pytest_args})
        print(f"baseline: {len(groups)} runs of the guard tests on unchanged code ...", flush=True)
        start = time.monotonic()
        for tests, extra in groups:
            code, failed, message = _run_tests(base, tests, extra)
            if code != 0:
                print(
                    f"baseline FAILED (exit {code}) for {' '.join((*extra, *tests))}: "
                    f"{failed} {message}; mutants cannot be judged"
                )
                raise SystemExit(2)
        print(f"baseline passed in {time.monotonic() - start:.0f} s", flush=True)
        for mutant in mutants:
            root = Path(tmp) / mutant.name
            _copy_tree(root)
            start = time.monotonic()
            why = _apply(root, mutant)
            if why is not None:
                outcome = Outcome(mutant, "stale", [], 0.0, why)
            else:
                code, failed, message = _run_tests(root, mutant.tests, mutant.pytest_args)
                verdict = "caught" if code not in (0, 5) else "missed"
                if code == 5:
                    verdict, failed = "error", ["no tests collected"]
                outcome = Outcome(mutant, verdict, failed, time.monotonic() - start, message)
            outcomes.append(outcome)
            print(
                f"{outcome.verdict:7} {mutant.name:40} {outcome.seconds:6.0f} s  "
                f"{', '.join(outcome.failed)}\n{'':49}{outcome.detail}",
                flush=True,
            )
            if not keep:
                shutil.rmtree(root, ignore_errors=True)
    return outcomes


def table(outcomes: Sequence[Outcome]) -> str:
    """A markdown table of the outcomes."""
    lines = [
        "| mutant | promise broken | verdict | test that failed | its message |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        first = o.failed[0].rsplit(".", 1)[-1] if o.failed else ""
        detail = o.detail.replace("|", "\\|")
        lines.append(
            f"| `{o.mutant.name}` | {o.mutant.promise} | {o.verdict} | {first} | {detail} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    from tests.mutant_catalogue import MUTANTS

    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__)
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--json", type=Path, help="also write the outcomes as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep each mutated copy")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTANTS}
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:40} {m.promise}")
        return 0
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutant(s): {', '.join(unknown)}; see --list")
    chosen = [by_name[n] for n in args.names] if args.names else list(MUTANTS)
    outcomes = run(chosen, keep=args.keep)
    print()
    print(table(outcomes))
    caught = sum(o.verdict == "caught" for o in outcomes)
    print(f"\n{caught} of {len(outcomes)} mutants caught")
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {
                        "name": o.mutant.name,
                        "promise": o.mutant.promise,
                        "verdict": o.verdict,
                        "failed": o.failed,
                        "message": o.detail,
                        "seconds": round(o.seconds, 1),
                    }
                    for o in outcomes
                ],
                indent=2,
            )
        )
    return 0 if caught == len(outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
