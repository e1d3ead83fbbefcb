"""Re-run one chapter with papermill parameters and render it as the book does.

A single notebook rendered on its own (``jupyter nbconvert``, a notebook viewer) loses the
book's theorem, proof and exercise boxes, its citations and its glued numbers. This script
executes the chapter with papermill (your ``-p NAME VALUE`` / ``-y YAML`` overrides, from the
checkout's root like the README's papermill commands), then builds a one-chapter book from the
executed notebook with the book's own ``_config.yml`` (execution off: the notebook is rendered
as papermill left it), extensions, CSS, bibliography and the plain (non-notebook) pages it
links to, such as the notation page. Links to other notebook chapters render as plain text
(they are not in this one-chapter book; those warnings are silenced).

Output, under ``--out`` (default ``_build/rerun/<chapter>``):

- ``book/<chapter>.ipynb`` — the executed notebook (every output, every glued number);
- ``_build/html/book/<chapter>.html`` — the rendered chapter (open it in a browser);
- ``glued.json`` — every glued number of the chapter, ``{name: value}``, also printed.

Usage: bash scripts/render_chapter.sh ch01_hessian -p n_networks 24 -p width 16
       (equivalently: .venv/bin/python scripts/render_chapter.py book/ch01_hessian.md -p …)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from prepare_fast_book import convert, is_notebook, toc_files  # noqa: E402


def chapter_source(name: str) -> Path:
    """``ch01_hessian``, ``book/ch01_hessian`` or ``book/ch01_hessian.md`` → the chapter's
    MyST notebook; SystemExit naming the available chapters otherwise."""
    p = Path(name)
    cands = [p, ROOT / p, ROOT / "book" / p]
    cands += [c.with_suffix(".md") for c in cands if c.suffix != ".md"]
    for c in cands:
        if c.is_file() and c.suffix == ".md" and is_notebook(c):
            return c.resolve()
    names = sorted(f.stem for f in (ROOT / "book").glob("*.md") if is_notebook(f))
    sys.exit(f"error: chapter {name!r} is not a notebook chapter of book/; one of {names}")


MISSING_REFS = ["ref.doc", "ref.ref", "ref.numref", "myst.xref_missing"]
"""Sphinx warnings for links to chapters that are not in the one-chapter book."""


def linked_pages(src: Path) -> list[str]:
    """The book's plain pages that ``src`` links to (``{doc}`name```), and the bibliography
    page if it cites anything: ``["book/notation", …]`` in ``_toc.yml`` order."""
    text = src.read_text(encoding="utf-8")
    linked = set(re.findall(r"\{doc\}`(?:[^`<]*<)?([\w/.-]+?)>?`", text))
    pages = []
    for f in toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text())):
        md = ROOT / (f if f.endswith(".md") else f + ".md")
        if not md.is_file() or is_notebook(md):
            continue
        if Path(f).name in {Path(x).name for x in linked} or (
                "{cite" in text and "{bibliography}" in md.read_text(encoding="utf-8")):
            pages.append(str(Path(f).with_suffix("")))
    return pages


def book_config(out: Path) -> None:
    """The book's ``_config.yml`` with execution off (render the executed notebook as is)
    and ``.ipynb`` files no longer excluded; its extensions, CSS and bibliography copied."""
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    cfg["exclude_patterns"] = [p for p in cfg.get("exclude_patterns", []) if "ipynb" not in p]
    cfg["execute"] = {**cfg.get("execute", {}), "execute_notebooks": "off"}
    sphinx = cfg.setdefault("sphinx", {}).setdefault("config", {})
    sphinx["suppress_warnings"] = [*sphinx.get("suppress_warnings", []), *MISSING_REFS]
    (out / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.copy2(ROOT / "references.bib", out / "references.bib")
    for d in ("_ext", "_static"):
        if (ROOT / d).is_dir():
            shutil.copytree(ROOT / d, out / d, ignore=shutil.ignore_patterns("__pycache__"))
    for extra in (ROOT / "book").rglob("*"):  # images and data files the pages reference
        if extra.is_file() and extra.suffix not in {".md", ".ipynb"} and not any(
                part in ("__pycache__", ".ipynb_checkpoints") for part in extra.parts):
            dest = out / extra.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, dest)


def glued(nb_path: Path) -> dict[str, str]:
    """Every glued value of an executed notebook: ``{name: text/plain}``."""
    nb = json.loads(nb_path.read_text())
    out: dict[str, str] = {}
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            meta = (o.get("metadata") or {}).get("scrapbook")
            if meta:
                data = o.get("data") or {}
                text = data.get(meta.get("mime_prefix", "") + "text/plain",
                                data.get("text/plain", ""))
                out[meta["name"]] = "".join(text) if isinstance(text, list) else str(text)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=(
        "Any other arguments go to papermill, e.g. -p n_networks 24 -y '{budgets: [8, 16]}'. "
        "List a chapter's parameters: .venv/bin/papermill --help-notebook on its .ipynb."))
    ap.add_argument("chapter", help="e.g. ch01_hessian or book/ch01_hessian.md")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default: _build/rerun/<chapter>)")
    args, papermill_args = ap.parse_known_args()
    src = chapter_source(args.chapter)
    out = (args.out or ROOT / "_build" / "rerun" / src.stem).resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "book").mkdir(parents=True)
    source_nb = out / "source" / f"{src.stem}.ipynb"
    convert(src, source_nb, inject=False)
    executed = out / "book" / f"{src.stem}.ipynb"
    bindir = Path(sys.executable).parent
    print(f"[render] executing {src.relative_to(ROOT)} with papermill "
          f"{' '.join(papermill_args) or '(default parameters)'}", flush=True)
    rc = subprocess.run([str(bindir / "papermill"), str(source_nb), str(executed),
                         "--cwd", str(ROOT), "--log-level", "WARNING", *papermill_args]).returncode
    if rc != 0:
        print(f"[render] papermill failed (exit {rc}); the partly executed notebook: {executed}")
        return rc
    book_config(out)
    pages = linked_pages(src)
    for f in pages:
        shutil.copy2(ROOT / f"{f}.md", out / f"{f}.md")
    (out / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": f"book/{src.stem}",
        "chapters": [{"file": f} for f in pages]}, sort_keys=False))
    print("[render] building the chapter with the book's configuration", flush=True)
    rc = subprocess.run([str(bindir / "jupyter-book"), "build", str(out), "--quiet"],
                        cwd=ROOT).returncode
    values = glued(executed)
    (out / "glued.json").write_text(json.dumps(values, indent=1) + "\n")
    width = max((len(k) for k in values), default=0)
    for k, v in values.items():
        print(f"  {k:<{width}}  {v}")
    html = out / "_build" / "html" / "book" / f"{src.stem}.html"
    print(f"[render] executed notebook: {executed}\n[render] glued numbers ({len(values)}): "
          f"{out / 'glued.json'}\n[render] rendered chapter: {html}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
