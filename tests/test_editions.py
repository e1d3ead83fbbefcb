"""The book as a course: structure of every chapter, the student edition, the PDF.

Structure tests always run. The edition tests check what ``scripts/editions.sh … --fast``
built (``scripts/test.sh`` builds it after the fast book) and skip when it is absent:

* the student edition has no solution text, and the instructor edition has it (so the check
  can fail);
* the PDF contains every page of ``_toc.yml`` (its title) and no raw TeX.
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from prepare_fast_book import edition_config, is_notebook, package_hash, toc_files  # noqa: E402

TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [ROOT / (f + ".md") for f in toc_files(TOC)]
DERIVATION = sorted((ROOT / "book").glob("ch[0-9][0-9]_*.md"))
BUILD = Path(os.environ.get("FLATBOOK_EDITIONS", ROOT / "_build"))
REQUIRE = os.environ.get("FLATBOOK_REQUIRE_EDITIONS", "") == "1"   # set by scripts/test.sh
SKIP_PDF = os.environ.get("FLATBOOK_SKIP_BROWSER", "") == "1"


def _absent(what: str) -> None:
    """Skip when an edition was not built — fail instead under scripts/test.sh, which builds it."""
    if REQUIRE:
        pytest.fail(f"{what} was not built (scripts/test.sh builds it)", pytrace=False)
    pytest.skip(f"{what} not built")


def _title(md: Path) -> str:
    """The page's H1 (first line starting with '# '), without MyST markup."""
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return re.sub(r"[`*$]|\{[a-z:]+\}", "", line[2:]).strip()
    raise AssertionError(f"{md.name} has no title")


# ----------------------------------------------------------------------------- structure


def test_course_pages_are_in_the_toc() -> None:
    names = {p.stem for p in PAGES}
    for page in ("ch09_capstone", "chain_card", "status", "lecture_plan", "intro"):
        assert page in names, f"{page} missing from _toc.yml"
    assert set(p.stem for p in DERIVATION) <= names


@pytest.mark.parametrize("path", DERIVATION, ids=[p.stem for p in DERIVATION])
def test_chapter_has_objectives_and_summary(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    i, j = text.find("**Objectives.**"), text.find("\n## Summary")
    assert i > 0, f"{path.name}: no '**Objectives.**' list"
    assert j > i, f"{path.name}: no '## Summary' section after the objectives"
    assert text.find("\n## Exercises") > j, f"{path.name}: the summary must precede the exercises"
    items = re.findall(r"^- ", text[j:text.find("\n## ", j + 5)], flags=re.M)
    assert len(items) >= 2, f"{path.name}: summary has {len(items)} items"


def test_capstone_states_and_checks_the_corollary() -> None:
    nb = jupytext.read(ROOT / "book" / "ch09_capstone.md")
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "{prf:theorem}" in md and "thm-capstone" in md and "{prf:proof}" in md
    assert "chain.corollary(" in code and "assert" in code


def test_roadmap_figure_on_the_intro_page() -> None:
    intro = ROOT / "book" / "intro.md"
    assert is_notebook(intro)
    assert "plots.roadmap(" in intro.read_text() and "fig-roadmap" in intro.read_text()


def test_intro_ceiling_prose() -> None:
    text = (ROOT / "book" / "intro.md").read_text()
    assert "shrinks with the batch size" not in text
    assert "therefore means a more compressed representation" not in text


def test_edition_config() -> None:
    cfg = {"title": "t", "execute": {"execute_notebooks": "force"}, "sphinx": {"config": {}}}
    s = edition_config(cfg, "student", ROOT / "_build" / "c")
    assert s["sphinx"]["config"]["hide_solutions"] is True
    assert s["execute"]["execute_notebooks"] == "cache"
    assert s["execute"]["cache"].endswith(package_hash())
    assert "hide_solutions" not in edition_config(cfg, "instructor")["sphinx"]["config"]
    assert cfg["sphinx"]["config"] == {}  # not modified in place
    with pytest.raises(ValueError, match="edition"):
        edition_config(cfg, "teacher")


# ----------------------------------------------------------------------------- editions


def _solution_texts() -> list[str]:
    """A distinctive sentence of the first solution of each derivation chapter."""
    out = []
    for md in DERIVATION:
        text = md.read_text(encoding="utf-8")
        m = re.search(r"```\{solution\}[^\n]*\n(?::[^\n]*\n)*\n(.+?)\n```", text, flags=re.S)
        assert m, f"{md.name} has no solution"
        words = re.findall(r"[A-Za-z][A-Za-z'-]{3,}", re.sub(r"\$[^$]*\$|\{[^}]*\}`[^`]*`", " ",
                                                            m.group(1)))
        out.append(" ".join(words[:5]))
    return out


RAW_TEX = r"\\(?:frac|lVert|rVert|operatorname|mathrm|sum|begin|left|right)\b|\$\$|\\[(\[]"


def test_raw_tex_pattern() -> None:
    assert re.findall(RAW_TEX, r"the bound $$\frac{a}{b}$$ and \(x\)")
    assert not re.findall(RAW_TEX, "tr H ≤ 2k/(pη), GM LVR^(2/k) — rendered math has no macros")


def _visible_text(html: str) -> str:
    html = re.sub(r"<(script|style)\b.*?</\1>", " ", html, flags=re.S)
    html = re.sub(r'<(span|div) class="math\b[^"]*">.*?</\1>', " ", html, flags=re.S)  # TeX
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _words(text: str) -> str:
    return " ".join(re.findall(r"[A-Za-z][A-Za-z'-]{3,}", text))


@pytest.mark.built
def test_student_edition_has_no_solution_text() -> None:
    student = BUILD / "student-fast" / "_build" / "html"
    teacher = BUILD / "fast" / "_build" / "html"
    if not (student / "index.html").is_file():
        _absent(f"student edition {student} (bash scripts/editions.sh student --fast)")
    for md, sentence in zip(DERIVATION, _solution_texts(), strict=True):
        page = student / "book" / f"{md.stem}.html"
        html = page.read_text(encoding="utf-8")
        assert 'class="solution' not in html and "solution-title" not in html, page
        assert sentence not in _words(_visible_text(html)), (page, sentence)
        assert "exercise" in html, f"{page}: the exercises themselves must remain"
        if (teacher / "book" / f"{md.stem}.html").is_file():   # the check can fail
            t_html = (teacher / "book" / f"{md.stem}.html").read_text(encoding="utf-8")
            assert sentence in _words(_visible_text(t_html)), (md.stem, sentence)


@pytest.mark.built
def test_pdf_has_every_chapter_and_no_raw_tex() -> None:
    pdf_path = BUILD / "flatbook-fast.pdf"
    if SKIP_PDF:
        pytest.skip("FLATBOOK_SKIP_BROWSER=1: no Chromium, no PDF")
    if not pdf_path.is_file():
        _absent(f"PDF {pdf_path} (bash scripts/editions.sh pdf --fast)")
    from pypdf import PdfReader

    reader = PdfReader(pdf_path)
    everything: list[str] = []
    prose: list[str] = []       # text outside code: code (monospace) may show TeX on purpose

    def keep(text: str, cm: object, tm: object, font: dict | None, size: float) -> None:
        everything.append(text)
        name = str((font or {}).get("/BaseFont", ""))
        if "Mono" not in name and "Courier" not in name:
            prose.append(text)

    for page in reader.pages:
        page.extract_text(visitor_text=keep)
    text = unicodedata.normalize("NFKC", "".join(everything))   # ligatures: "ﬂat" -> "flat"
    tex = unicodedata.normalize("NFKC", "".join(prose))
    assert 0 < len(tex) < len(text), "the font filter must keep the prose and drop the code"
    flat = _words(text).lower()
    missing = [md.stem for md in PAGES if _words(_title(md)).lower() not in flat]
    assert not missing, f"pages missing from the PDF: {missing}"
    raw = sorted(set(re.findall(RAW_TEX, tex)))
    assert not raw, f"raw TeX left in the PDF's prose: {raw}"
    assert len(reader.pages) > 3 * len(PAGES)


def test_print_conversion_removes_collapsed_parts(tmp_path: Path) -> None:
    from prepare_fast_book import convert

    md = tmp_path / "x.md"
    md.write_text("---\njupytext:\n  text_representation:\n    extension: .md\n"
                  "    format_name: myst\nkernelspec:\n  display_name: Python 3\n"
                  "  language: python\n  name: python3\n---\n\n# T\n\n"
                  "```{code-cell} ipython3\n:tags: [hide-input]\nx = 1\n```\n")
    for flag, want in ((False, "hide-input"), (True, "remove-input")):
        convert(md, tmp_path / "x.ipynb", for_print=flag)
        nb = jupytext.read(tmp_path / "x.ipynb")
        assert [c.metadata["tags"] for c in nb.cells if c.cell_type == "code"] == [[want]]
