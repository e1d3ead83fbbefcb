"""The mutation harness (scripts/mutants.py) plants each error where the statement is computed
today: a refactor that moves the code must move the anchor too, or the mutant plants nothing
and the harness's table would be silently stale."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from mutants import MUTANTS  # noqa: E402


@pytest.mark.parametrize("m", MUTANTS, ids=[m.name for m in MUTANTS])
def test_every_mutant_anchor_occurs_exactly_once(m: object) -> None:
    text = (ROOT / m.path).read_text(encoding="utf-8")  # type: ignore[attr-defined]
    assert text.count(m.old) == 1, (m.name, m.path)  # type: ignore[attr-defined]
    assert m.new != m.old and all((ROOT / "book" / f"{c}.md").is_file()  # type: ignore[attr-defined]
                                  for c in m.chapters)  # type: ignore[attr-defined]
    assert m.chapters, m.name  # type: ignore[attr-defined]
