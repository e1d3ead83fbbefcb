"""The book imports only the public package (flatbook.book holds what chapters need)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from prepare_fast_book import is_notebook  # noqa: E402

NOTEBOOKS = [p for p in sorted((ROOT / "book").glob("*.md")) if is_notebook(p)]
# a private flatbook module (flatbook._x, flatbook.mod._x) or a private name imported from one
PRIVATE = re.compile(
    r"(from\s+flatbook(\.\w+)*\s+import\s+[^\n#]*\b_\w+)"
    r"|(\bflatbook(\.[a-z]\w*)*\._\w+)"
)


def private_uses(code: str) -> list[str]:
    """Lines of ``code`` that import or use a private flatbook module or name."""
    return [line.strip() for line in code.splitlines() if PRIVATE.search(line)]


def test_detector_finds_private_imports() -> None:
    assert private_uses("from flatbook._validate import check_parameters")
    assert private_uses("from flatbook import _validate")
    assert private_uses("import flatbook._io as io")
    assert private_uses("x = flatbook.curvature._lanczos")
    assert private_uses("from flatbook.curvature import sharpness, _lanczos")
    assert not private_uses("from flatbook.book import check_parameters")
    assert not private_uses("from flatbook import bounds, curvature, data  # plots")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_imports_nothing_private(path: Path) -> None:
    nb = jupytext.read(path)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not private_uses(code), f"{path.name}: {private_uses(code)}"


def test_book_module_reexports_check_parameters() -> None:
    from flatbook import _validate, book

    assert book.check_parameters is _validate.check_parameters
    assert book.check_parameters.__doc__
    book.check_parameters({"n": 3}, n="int >= 1")
    with pytest.raises(ValueError, match="parameter n must be an integer ≥ 1"):
        book.check_parameters({"n": 0}, n="int >= 1")
