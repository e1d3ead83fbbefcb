"""Structure of the book: every chapter executable, parametrisable, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from prepare_fast_book import is_notebook, toc_files  # noqa: E402

TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [ROOT / (f + ".md") for f in toc_files(TOC)]
CHAPTERS = [p for p in PAGES if is_notebook(p)]


def test_toc_pages_exist() -> None:
    missing = [str(p) for p in PAGES if not p.is_file()]
    assert not missing, missing
    assert CHAPTERS, "no executable chapter in _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_has_one_parameters_cell_and_imports_flatbook(path: Path) -> None:
    nb = jupytext.read(path)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: want exactly one cell tagged 'parameters'"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "flatbook" in code, f"{path.name} does not use the flatbook package"
    assert "assert" in code, f"{path.name} checks nothing (no assert)"
    # test parameters must name parameters that exist
    params = (nb.metadata.get("flatbook") or {}).get("test_parameters") or {}
    names = set(re.findall(r"^(\w+)\s*=", tagged[0].source, flags=re.M))
    assert set(params) <= names, f"{path.name}: unknown test parameters {set(params) - names}"


def test_markdown_pages_are_not_notebooks_by_accident() -> None:
    # a page with code cells but without jupytext/kernelspec front matter is silently not run
    for p in PAGES:
        if not is_notebook(p):
            assert "{code-cell}" not in p.read_text(), f"{p.name} has code cells but no kernelspec"


@pytest.mark.built
def test_built_html_has_no_external_scripts() -> None:
    html = Path(os.environ.get("FLATBOOK_FAST_HTML", ROOT / "_build" / "fast" / "_build" / "html"))
    if not (html / "index.html").is_file():
        pytest.skip(f"no built book at {html} (scripts/test.sh builds it first)")
    pages = list(html.rglob("*.html"))
    assert len(pages) >= len(PAGES)
    bad = []
    for page in pages:
        text = page.read_text(encoding="utf-8", errors="replace")
        for src in re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", text):
            if re.match(r"(https?:)?//", src):
                bad.append((page.name, src))
        for host in ("unpkg.com", "cdn.jsdelivr.net", "cdnjs.cloudflare.com"):
            if host in text:
                bad.append((page.name, host))
    assert not bad, f"external scripts: {bad[:5]}"
    assert (html / "_static" / "mathjax" / "es5" / "tex-mml-chtml.js").is_file()
    chapter = html / "book" / f"{CHAPTERS[0].stem}.html"
    assert "mathjax/es5/tex-mml-chtml.js" in chapter.read_text()


def test_papermill_changes_a_parameter(tmp_path: Path) -> None:
    """The README's papermill recipe: a changed parameter shows in the executed notebook."""
    src = ROOT / "book" / "ch01_hessian.md"
    ipynb = tmp_path / "in.ipynb"
    out = tmp_path / "out.ipynb"
    bindir = Path(sys.executable).parent
    subprocess.run([bindir / "jupytext", "--to", "ipynb", "-o", ipynb, src], check=True)
    subprocess.run(
        [bindir / "papermill", ipynb, out, "-p", "n_networks", "2", "-p", "width", "5",
         "-p", "n_samples", "7", "--log-level", "ERROR"],
        check=True,
    )
    nb = jupytext.read(out)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "n_networks = 2" in injected[0].source
    glued = [o for c in nb.cells for o in c.get("outputs", [])
             if o.get("metadata", {}).get("scrapbook", {}).get("name") == "ch01_n_networks"]
    assert glued and glued[0]["data"]["application/papermill.record/text/plain"] == "2"
