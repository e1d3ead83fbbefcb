"""Mirror the book into a build folder with every chapter as an .ipynb at its fast parameters.

Each chapter listed in ``_toc.yml`` that is a Jupytext notebook (``jupytext`` + ``kernelspec``
front matter) is converted with jupytext; if its front matter declares
``flatbook: {test_parameters: {...}}`` those values are injected exactly as papermill injects
them (a cell tagged ``injected-parameters`` right after the cell tagged ``parameters``).
Plain markdown pages, ``_config.yml`` (with ``**.ipynb`` no longer excluded), ``_toc.yml``,
``references.bib`` and ``_ext`` are copied, so that ``jupyter-book build OUT`` builds the same
book at test scale and ``pytest --nbval-lax OUT/book`` runs every chapter.

Editions (``scripts/editions.sh``): ``--edition student`` sets sphinx-exercise's
``hide_solutions`` (no solution is written to the student book); ``--params default`` keeps
every chapter at its default parameters (the real book) instead of the fast ones; ``--cache``
switches execution to Jupyter Book's execution cache in a folder named by a hash of the
``flatbook`` package sources, so that the editions built from one checkout execute each
notebook once and reuse it (a change to the package or to a notebook's code re-executes).

Usage: python scripts/prepare_fast_book.py --out _build/fast
       python scripts/prepare_fast_book.py --out _build/student --edition student \
           --params default --cache _build/.jupyter_cache
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml
from papermill.parameterize import parameterize_notebook

ROOT = Path(__file__).resolve().parents[1]


def toc_files(toc: dict) -> list[str]:
    """All ``file:`` entries of a Jupyter Book ``_toc.yml`` (root included), in order."""
    out = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                out.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk({k: v for k, v in toc.items() if k != "root"})
    return out


def is_notebook(md: Path) -> bool:
    head = md.read_text(encoding="utf-8")[:2000]
    return head.startswith("---") and "jupytext:" in head and "kernelspec:" in head


def package_hash(root: Path = ROOT) -> str:
    """Short sha256 of every ``flatbook/*.py`` (names and contents): the cache's key."""
    h = hashlib.sha256()
    for f in sorted((root / "flatbook").rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def edition_config(cfg: dict, edition: str = "instructor", cache: Path | None = None) -> dict:
    """The book's ``_config.yml`` for an edition: ``student`` hides every solution
    (sphinx-exercise ``hide_solutions``); ``cache`` executes through the Jupyter Book cache
    in ``cache/<package_hash()>`` instead of forcing every notebook."""
    if edition not in ("instructor", "student"):
        raise ValueError(f"edition must be 'instructor' or 'student'; got {edition!r}")
    cfg = {**cfg, "sphinx": {**cfg.get("sphinx", {})}}
    cfg["sphinx"]["config"] = {**cfg["sphinx"].get("config", {})}
    if edition == "student":
        cfg["sphinx"]["config"]["hide_solutions"] = True
        cfg["title"] = f"{cfg.get('title', '')} (student edition)"
    if cache is not None:
        cfg["execute"] = {**cfg.get("execute", {}), "execute_notebooks": "cache",
                          "cache": str((cache / package_hash()).resolve())}
    return cfg


#: For print (the PDF): collapsed parts cannot be expanded on paper, and the single-page HTML
#: builder cannot render myst-nb's collapsed cells; they are removed instead.
PRINT_TAGS = {"hide-input": "remove-input", "hide-output": "remove-output",
              "hide-cell": "remove-cell"}


def copy_outputs(nb: nbformat.NotebookNode, executed: Path) -> None:
    """Give ``nb`` the outputs of its executed twin ``executed`` (same code cells, same order,
    as written by ``scripts/nbval_save.py``); SystemExit naming the chapter if the twin is
    missing, was not executed to the end, or has other code."""
    if not executed.is_file():
        sys.exit(f"error: {executed} does not exist: run the chapters under nbval first "
                 "(scripts/test.sh does) or build without --executed")
    done = nbformat.read(executed, as_version=4)
    mine = [c for c in nb.cells if c.cell_type == "code"]
    theirs = [c for c in done.cells if c.cell_type == "code"]
    if [c.source for c in mine] != [c.source for c in theirs]:
        sys.exit(f"error: {executed} holds other code than its chapter: re-run the chapters")
    if any(c.get("execution_count") is None for c in theirs):
        sys.exit(f"error: {executed} was not executed to the end (a cell failed under nbval)")
    for a, b in zip(mine, theirs, strict=True):
        a.outputs, a.execution_count = b.outputs, b.execution_count


def convert(md: Path, dest: Path, inject: bool = True, for_print: bool = False,
            executed: Path | None = None) -> None:
    nb = jupytext.read(md)
    for cell in nb.cells:  # papermill expects a tags list on every cell
        cell.metadata.setdefault("tags", [])
        if for_print:
            cell.metadata["tags"] = [PRINT_TAGS.get(t, t) for t in cell.metadata["tags"]]
    nb.metadata.setdefault("papermill", {})
    params = (nb.metadata.get("flatbook") or {}).get("test_parameters") or {}
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) > 1:
        sys.exit(f"error: {md} has {len(tagged)} cells tagged 'parameters' (want at most 1)")
    if params and inject:
        if not tagged:
            sys.exit(f"error: {md} declares test_parameters but has no cell tagged 'parameters'")
        nb = parameterize_notebook(nb, params, report_mode=False, comment="fast test parameters")
    if executed is not None:
        copy_outputs(nb, executed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="_build/fast", help="output folder (default: _build/fast)")
    ap.add_argument("--edition", default="instructor", choices=["instructor", "student"],
                    help="student: solutions hidden (default: instructor, every solution)")
    ap.add_argument("--params", default="fast", choices=["fast", "default"],
                    help="fast: inject each chapter's test parameters (default); default: not")
    ap.add_argument("--print", dest="for_print", action="store_true",
                    help="for the PDF: hidden (collapsed) cell parts are removed instead")
    ap.add_argument("--cache", default=None,
                    help="execute through the Jupyter Book cache under this folder")
    ap.add_argument("--no-execute", action="store_true",
                    help="write the config with execution off (the notebooks are executed "
                         "elsewhere: under nbval with scripts/nbval_save.py)")
    ap.add_argument("--executed", default=None,
                    help="folder of a prepared book whose notebooks were executed (by nbval): "
                         "copy their outputs, execution off")
    args = ap.parse_args()
    executed = None if args.executed is None else (ROOT / args.executed).resolve()
    out = (ROOT / args.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    cfg["exclude_patterns"] = [p for p in cfg.get("exclude_patterns", []) if "ipynb" not in p]
    cfg = edition_config(cfg, args.edition, None if args.cache is None else ROOT / args.cache)
    if args.no_execute or executed is not None:
        cfg["execute"] = {**cfg.get("execute", {}), "execute_notebooks": "off"}
    if args.for_print:  # the single-page HTML builder needs every node's html handlers
        cfg["sphinx"]["local_extensions"] = {**cfg["sphinx"].get("local_extensions", {}),
                                             "print_support": "_ext"}
    (out / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    for name in ["_toc.yml", "references.bib"]:
        shutil.copy2(ROOT / name, out / name)
    shutil.copytree(ROOT / "_ext", out / "_ext", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "_static", out / "_static")  # the book's CSS (e.g. print rules)
    # static assets referenced by pages (images, data shipped with the book)
    for extra in (ROOT / "book").rglob("*"):
        if extra.is_file() and extra.suffix not in {".md", ".ipynb"}:
            if "__pycache__" in extra.parts or ".ipynb_checkpoints" in extra.parts:
                continue
            d = out / extra.relative_to(ROOT)
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(extra, d)

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    n_nb = 0
    for f in toc_files(toc):
        src = ROOT / (f if f.endswith(".md") else f + ".md")
        if not src.is_file():
            sys.exit(f"error: _toc.yml lists {f!r} but {src} does not exist")
        rel = src.relative_to(ROOT)
        if is_notebook(src):
            twin = None if executed is None else (executed / rel).with_suffix(".ipynb")
            convert(src, (out / rel).with_suffix(".ipynb"), inject=args.params == "fast",
                    for_print=args.for_print, executed=twin)
            n_nb += 1
        else:
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out / rel)
    how = (", outputs of " + str(executed) if executed else ", not executed" if args.no_execute
           else ", cached" if args.cache else "")
    print(f"[prepare] {n_nb} notebooks -> {out} ({args.edition} edition, {args.params} "
          f"parameters{how})")


if __name__ == "__main__":
    main()
