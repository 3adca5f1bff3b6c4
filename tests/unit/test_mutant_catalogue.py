"""Every breakage ``python -m tests.mutants`` applies still finds its text in the source: a guard
whose mutant went stale would no longer be checked by anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mutant_catalogue import MUTANTS
from tests.mutants import REPO, Mutant


def test_mutant_names_are_unique() -> None:
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_still_applies(mutant: Mutant) -> None:
    text = (REPO / mutant.path).read_text()
    assert text.count(mutant.old) == mutant.count, (
        f"{mutant.name}: its text occurs {text.count(mutant.old)} times in {mutant.path}, "
        f"not {mutant.count}: update tests/mutant_catalogue.py to the code as it is now"
    )
    assert mutant.new != mutant.old
    for selection in mutant.tests:
        assert (REPO / selection.split("::")[0]).exists(), selection
    # Code only: Python, and the Lua and SQL files the backends load.
    assert Path(mutant.path).suffix in {".py", ".lua", ".sql"}
