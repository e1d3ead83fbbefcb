"""Traceability: every lemma and theorem of the book → the ``flatbook`` functions that compute
it → the tests and chapter cells that check it.

The *source of truth* is :data:`LABELS`, a hand-written map from each statement's label (the
``:label:`` of a ``{prf:lemma}``, ``{prf:theorem}``, ``{prf:corollary}`` or
``{prf:proposition}`` directive in ``book/*.md``) to the fully qualified names of the functions
that compute its two sides (or its identity). Everything else is *scanned*:

- :func:`book_statements` — the statements of the book (label, kind, title, chapter);
- :func:`chapter_cells` — for each chapter, the ``flatbook`` names each code cell references
  (import aliases followed across cells, e.g. ``from flatbook import bounds`` then
  ``bounds.t3(...)`` → ``flatbook.bounds.t3``) and whether the cell asserts;
- :func:`test_references` — for each test function in ``tests/``, the ``flatbook`` names it
  references (module-level and local imports).

:func:`trace` joins the three into one :class:`Row` per statement, :func:`problems` lists every
inconsistency (a statement missing from :data:`LABELS`, a stale entry, a mapped function that
does not exist or that no test reaches, directly or through the package's own call graph
:func:`package_calls`), and :func:`to_markdown` renders the table shown on
the book's traceability page. ``tests/test_traceability.py`` asserts that :func:`problems` is
empty, so the map cannot drift from the book, the package or the tests.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "KINDS",
    "LABELS",
    "CellRef",
    "Row",
    "Statement",
    "book_statements",
    "chapter_cells",
    "flatbook_names",
    "package_calls",
    "problems",
    "resolve",
    "test_references",
    "to_markdown",
    "toc_pages",
    "trace",
]

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("lemma", "theorem", "corollary", "proposition")

# label → functions that compute the statement (both sides of an inequality, or the identity).
# Keep in book order. A new lemma/theorem in the book must be added here (the test says so).
LABELS: dict[str, tuple[str, ...]] = {
    # ch01 — the Hessian at an interpolating minimum
    "lem-gn": ("flatbook.curvature.dense_hessian", "flatbook.curvature.gn_trace"),
    "lem-residual": ("flatbook.curvature.sharpness",),
    "lem-hutchinson": ("flatbook.curvature.trace",),
    # ch02 — linear stability
    "thm-gd-stability": ("flatbook.bounds.t7_gd", "flatbook.curvature.sharpness"),
    "lem-batch-moment": ("flatbook.curvature.gauss_newton_matrix", "flatbook.bounds.sgd_p"),
    "thm-sgd-stability": ("flatbook.bounds.t7_sgd", "flatbook.bounds.mean_square_lr",
                          "flatbook.tight.isotropic_linear"),
    # ch03 — from parameters to inputs
    "lem-multiplicative": ("flatbook.bounds.l2_identity", "flatbook.bounds.l2_bound",
                           "flatbook.tight.orthogonal_deep_linear"),
    "lem-block": ("flatbook.bounds.l3_bound", "flatbook.tight.orthogonal_deep_linear"),
    "thm-t1-smoothness": ("flatbook.bounds.t1_per_sample", "flatbook.bounds.t1_weighted",
                          "flatbook.bounds.t1_min", "flatbook.tight.isotropic_linear"),
    # ch04 — from smoothness to volume
    "lem-amgm": ("flatbook.geometry.measures", "flatbook.tight.equal_spectrum_jacobians"),
    "thm-t2-volume": ("flatbook.bounds.t2_per_sample", "flatbook.bounds.t2_min",
                      "flatbook.bounds.t2_gm", "flatbook.tight.isotropic_linear"),
    # ch05 — MLS and the network-wide bounds
    "thm-t3-mls": ("flatbook.bounds.quantities", "flatbook.bounds.t1_per_sample",
                   "flatbook.bounds.t3_weighted", "flatbook.bounds.t3_min",
                   "flatbook.bounds.t3_gm", "flatbook.tight.isotropic_linear"),
    "thm-t4-network": ("flatbook.bounds.t4_nmls", "flatbook.bounds.t4_nvr",
                       "flatbook.bounds.l2_bound", "flatbook.bounds.l3_bound",
                       "flatbook.tight.orthogonal_deep_linear"),
    # ch06 — local dimensionality
    "lem-ld-link": ("flatbook.geometry.measures", "flatbook.geometry.local_dim",
                    "flatbook.tight.equal_spectrum_jacobians", "flatbook.tight.rank_one_jacobians"),
    "thm-t6-ld": ("flatbook.bounds.t6_construction", "flatbook.geometry.local_dim",
                  "flatbook.curvature.dense_hessian"),
    # ch07 — reparametrisation-invariant sharpness
    "thm-t5-kappa": ("flatbook.bounds.relative_flatness", "flatbook.bounds.kappa",
                     "flatbook.bounds.t5_identity", "flatbook.bounds.t5_mls",
                     "flatbook.bounds.t5_lvr", "flatbook.tight.scalar_output"),
    "lem-rescale": ("flatbook.models.rescale_layers", "flatbook.curvature.jacobian_sqnorms",
                    "flatbook.bounds.kappa", "flatbook.bounds.quantities"),
    "lem-adaptive": ("flatbook.bounds.adaptive_sharpness", "flatbook.geometry.input_jacobian",
                     "flatbook.tight.equal_units"),
    # ch08 — shared weights
    "lem-shared": ("flatbook.bounds.shared_weight_terms", "flatbook.curvature.jacobian_sqnorms",
                   "flatbook.geometry.input_jacobian", "flatbook.tight.tied_tokens"),
    "thm-shared-counterexample": ("flatbook.curvature.dense_hessian",
                                  "flatbook.curvature.gn_trace",
                                  "flatbook.geometry.output_measures"),
    # ch09 — capstone
    "thm-capstone": ("flatbook.chain.corollary", "flatbook.bounds.mean_square_lr",
                     "flatbook.bounds.t2_gm", "flatbook.bounds.t3_gm",
                     "flatbook.chain.mls_sharp", "flatbook.tight.isotropic_linear",
                     "flatbook.tight.sharp_mls_case"),
}

_DIRECTIVE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{prf:(?P<kind>[a-z]+)\}\s*(?P<title>.*)$")
_LABEL = re.compile(r"^:label:\s*(?P<label>\S+)\s*$")


@dataclass(frozen=True)
class Statement:
    """A ``prf`` directive of the book: ``label``, ``kind`` (lemma, theorem, …), ``title``,
    and ``chapter`` (file stem, e.g. ``"ch05_mls_network"``)."""

    label: str
    kind: str
    title: str
    chapter: str


@dataclass(frozen=True)
class CellRef:
    """Code cell ``index`` (1-based, counting code cells only) of ``chapter``; ``asserts`` is
    True when the cell contains an ``assert`` statement."""

    chapter: str
    index: int
    asserts: bool


@dataclass(frozen=True)
class Row:
    """One line of the traceability table."""

    statement: Statement
    functions: tuple[str, ...]
    tests: tuple[str, ...]
    cells: tuple[CellRef, ...]


# ----------------------------------------------------------------------------- the book


def _chapters(book_dir: Path) -> list[Path]:
    """``book_dir/*.md``, skipping scratch files whose name starts with ``_`` or ``.``."""
    if not book_dir.is_dir():
        raise ValueError(f"book_dir {book_dir} is not a directory")
    return sorted(p for p in book_dir.glob("*.md") if not p.name.startswith(("_", ".")))


def book_statements(book_dir: str | Path = ROOT / "book",
                    kinds: Iterable[str] = KINDS) -> list[Statement]:
    """All labelled ``{prf:<kind>}`` directives in ``book_dir/*.md``, in file and line order.

    Args:
        kinds: directive kinds to collect (default: lemma, theorem, corollary, proposition).

    Raises:
        ValueError: a collected directive has no ``:label:`` option, or a label is repeated.
    """
    kinds = tuple(kinds)
    out: list[Statement] = []
    for md in _chapters(Path(book_dir)):
        lines = md.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            m = _DIRECTIVE.match(line.strip())
            if not m or m["kind"] not in kinds:
                continue
            label = None
            for opt in lines[i + 1:]:
                opt = opt.strip()
                if not opt.startswith(":"):
                    break
                lm = _LABEL.match(opt)
                if lm:
                    label = lm["label"]
            if label is None:
                raise ValueError(f"{md.name}:{i + 1}: {{prf:{m['kind']}}} has no :label:")
            out.append(Statement(label, m["kind"], m["title"].strip(), md.stem))
    seen: set[str] = set()
    for s in out:
        if s.label in seen:
            raise ValueError(f"label {s.label!r} is defined twice in the book")
        seen.add(s.label)
    return out


def _code_cells(md: Path) -> list[str]:
    """Sources of the code cells of a Jupytext MyST chapter (empty for plain pages)."""
    import jupytext  # lazy: only needed when scanning the book

    head = md.read_text(encoding="utf-8")[:2000]
    if not (head.startswith("---") and "jupytext:" in head):
        return []
    nb = jupytext.read(md)
    return [c.source for c in nb.cells if c.cell_type == "code"]


# ----------------------------------------------------------------------------- names


def _imports(node: ast.AST, aliases: dict[str, str]) -> None:
    """Record ``flatbook`` import aliases found anywhere under ``node`` into ``aliases``."""
    for n in ast.walk(node):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name == "flatbook" or a.name.startswith("flatbook."):
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases["flatbook"] = "flatbook"
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            if n.module == "flatbook" or n.module.startswith("flatbook."):
                for a in n.names:
                    aliases[a.asname or a.name] = f"{n.module}.{a.name}"


def _dotted(node: ast.AST) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return parts[::-1]
    return None


def flatbook_names(source: str | ast.AST, aliases: Mapping[str, str] | None = None
                   ) -> tuple[set[str], dict[str, str]]:
    """Fully qualified ``flatbook`` names referenced by ``source``.

    Imports in ``source`` extend ``aliases`` (``{local name: qualified name}``), then every
    name or attribute chain whose root is an alias is resolved, e.g. with
    ``from flatbook import bounds as b``, ``b.t3(...)`` gives ``flatbook.bounds.t3`` (and the
    prefix ``flatbook.bounds``). Returns ``(names, aliases)``; the updated aliases carry
    imports from one notebook cell to the next. Lines of IPython magics (``%…``, ``!…``) are
    skipped; source that still does not parse contributes no names.
    """
    al = dict(aliases or {})
    names: set[str] = set()
    tree = _parse(source) if isinstance(source, str) else source
    _imports(tree, al)
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute | ast.Name) and not isinstance(
            getattr(n, "ctx", None), ast.Store
        ):
            parts = _dotted(n)
            if parts and parts[0] in al:
                names.update(_prefixes(".".join([al[parts[0]], *parts[1:]])))
    return names, al


def _prefixes(q: str) -> list[str]:
    p = q.split(".")
    return [".".join(p[:i]) for i in range(2, len(p) + 1)]


def chapter_cells(book_dir: str | Path = ROOT / "book") -> dict[str, list[tuple[set[str], bool]]]:
    """For each chapter stem, its code cells in order as ``(flatbook names, has assert)``.

    A cell that calls a helper function defined in an earlier cell of the same chapter
    inherits the ``flatbook`` names that helper uses, and its asserts.
    """
    out: dict[str, list[tuple[set[str], bool]]] = {}
    for md in _chapters(Path(book_dir)):
        cells = _code_cells(md)
        if not cells:
            continue
        al: dict[str, str] = {}
        helpers: dict[str, tuple[set[str], bool]] = {}
        rows = []
        for src in cells:
            names, al = flatbook_names(src, al)
            tree = _parse(src)
            asserts = any(isinstance(n, ast.Assert) for n in ast.walk(tree))
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
            for h in used & set(helpers):
                names |= helpers[h][0]
                asserts |= helpers[h][1]
            for node in tree.body:
                if isinstance(node, ast.FunctionDef):
                    helpers[node.name] = (flatbook_names(node, al)[0],
                                          any(isinstance(n, ast.Assert) for n in ast.walk(node)))
            rows.append((names, asserts))
        out[md.stem] = rows
    return out


def _parse(src: str) -> ast.Module:
    try:
        return ast.parse(src)
    except SyntaxError:
        kept = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        try:
            return ast.parse("\n".join(kept))
        except SyntaxError:
            return ast.Module(body=[], type_ignores=[])


def package_calls(package_dir: str | Path = ROOT / "flatbook") -> dict[str, set[str]]:
    """Static call graph of the package: ``{qualified function: {qualified names it uses}}``.

    For every top-level function and class of every module, the ``flatbook`` names its body
    references: same-module top-level names (``t3_min`` inside ``flatbook.bounds``) and
    imported ``flatbook`` names (``curvature.gn_trace``). Used to count a function as tested
    when a test reaches it through another one (e.g. ``bounds.all_bounds`` → ``bounds.t3_min``).
    """
    package_dir = Path(package_dir)
    graph: dict[str, set[str]] = {}
    for py in sorted(package_dir.glob("*.py")):
        mod = f"flatbook.{py.stem}" if py.stem != "__init__" else "flatbook"
        tree = ast.parse(py.read_text(encoding="utf-8"))
        al: dict[str, str] = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                _imports(stmt, al)
                _reexports(stmt, mod, graph)
            elif isinstance(stmt, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                al[stmt.name] = f"{mod}.{stmt.name}"
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                names, _ = flatbook_names(stmt, al)
                names.discard(f"{mod}.{stmt.name}")
                graph.setdefault(f"{mod}.{stmt.name}", set()).update(names)
    return graph


def _reexports(stmt: ast.stmt, mod: str, graph: dict[str, set[str]]) -> None:
    """Link a name ``mod`` re-exports from another flatbook module to its source, both ways."""
    if isinstance(stmt, ast.ImportFrom) and (stmt.module or "").startswith("flatbook."):
        for a in stmt.names:
            here, there = f"{mod}.{a.asname or a.name}", f"{stmt.module}.{a.name}"
            graph.setdefault(here, set()).add(there)
            graph.setdefault(there, set()).add(here)


def _closure(names: set[str], graph: Mapping[str, set[str]]) -> set[str]:
    out, todo = set(names), list(names)
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in out:
                out.add(m)
                todo.append(m)
    return out


def test_references(tests_dir: str | Path = ROOT / "tests",
                    graph: Mapping[str, set[str]] | None = None) -> dict[str, set[str]]:
    """``{qualified flatbook name: {"tests/test_x.py::test_y", …}}`` over every test function
    (``test_*`` functions and methods of ``Test*`` classes) in ``tests_dir/**/test_*.py``.
    A test references a name if its body (or a module-level import alias) resolves to it.
    With a ``graph`` (:func:`package_calls`), names reached through package functions count
    too, with the test id suffixed ``" (indirect)"`` when not referenced directly."""
    tests_dir = Path(tests_dir)
    if not tests_dir.is_dir():
        raise ValueError(f"tests_dir {tests_dir} is not a directory")
    refs: dict[str, set[str]] = {}
    for py in sorted(tests_dir.rglob("test_*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        mod_aliases: dict[str, str] = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                _imports(stmt, mod_aliases)
        rel = py.relative_to(tests_dir.parent).as_posix()
        for fn, owner in _test_functions(tree):
            names, _ = flatbook_names(fn, mod_aliases)
            tid = f"{rel}::{owner + '::' if owner else ''}{fn.name}"
            for q in names:
                refs.setdefault(q, set()).add(tid)
            if graph is not None:
                for q in _closure(names, graph) - names:
                    refs.setdefault(q, set()).add(tid + " (indirect)")
    return refs


def _test_functions(tree: ast.Module) -> list[tuple[ast.FunctionDef, str]]:
    out: list[tuple[ast.FunctionDef, str]] = []
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name.startswith("test"):
            out.append((stmt, ""))
        elif isinstance(stmt, ast.ClassDef) and stmt.name.startswith("Test"):
            for s in stmt.body:
                if isinstance(s, ast.FunctionDef) and s.name.startswith("test"):
                    out.append((s, stmt.name))
    return out


def resolve(qualname: str) -> object:
    """Import and return the object named ``qualname`` (``"flatbook.bounds.t3"``).

    Raises:
        ValueError: no importable prefix or a missing attribute (message names both).
    """
    parts = qualname.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                raise ValueError(f"{qualname}: {'.'.join(parts[:i])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ValueError(f"{qualname}: no importable module prefix")


# ----------------------------------------------------------------------------- the table


def toc_pages(root: str | Path = ROOT) -> set[str] | None:
    """Stems of the ``book/`` pages listed in ``root/_toc.yml`` (None if there is no toc)."""
    toc = Path(root) / "_toc.yml"
    if not toc.is_file():
        return None
    import yaml  # lazy: only needed when reading the toc

    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    found.append(node[key])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(toc.read_text(encoding="utf-8")))
    return {Path(f).with_suffix("").name for f in found}


def trace(root: str | Path = ROOT, labels: Mapping[str, tuple[str, ...]] = LABELS,
          built_only: bool = True, toc_root: str | Path | None = None) -> list[Row]:
    """One :class:`Row` per statement of the book (book order): its mapped functions, the tests
    that reference any of them, and the code cells *of the statement's own chapter* that call
    any of them (the cells that check it).

    Args:
        built_only: keep only statements of pages listed in ``_toc.yml`` (the built book), so
            that the rendered table never links to a page that is not built.
        toc_root: folder whose ``_toc.yml`` defines the built book (default ``root``; a build
            folder made by ``scripts/prepare_fast_book.py`` has its own copy).
    """
    root = Path(root)
    statements = book_statements(root / "book")
    pages = toc_pages(toc_root if toc_root is not None else root) if built_only else None
    if pages is not None:
        statements = [s for s in statements if s.chapter in pages]
    cells = chapter_cells(root / "book")
    refs = test_references(root / "tests", package_calls(root / "flatbook"))
    rows = []
    for s in statements:
        funcs = tuple(labels.get(s.label, ()))
        found = {t for f in funcs for t in refs.get(f, ())}
        direct = {t for t in found if not t.endswith(" (indirect)")}
        found = direct | {t for t in found - direct if t.removesuffix(" (indirect)") not in direct}
        modules = {f.split(".")[1] for f in funcs if f.count(".") >= 2}

        def rank(t: str, modules: set[str] = modules, direct: set[str] = direct
                 ) -> tuple[bool, bool, str]:
            # direct references first, then tests of the function's own module
            return (t not in direct, not any(f"test_{m}" in t for m in modules), t)

        tests = sorted(found, key=rank)
        crefs = [CellRef(s.chapter, i + 1, asserts)
                 for i, (names, asserts) in enumerate(cells.get(s.chapter, []))
                 if any(f in names for f in funcs)]
        rows.append(Row(s, funcs, tuple(tests), tuple(crefs)))
    return rows


def problems(root: str | Path = ROOT, labels: Mapping[str, tuple[str, ...]] = LABELS
             ) -> list[str]:
    """Every inconsistency between :data:`LABELS`, the book, the package and the tests
    (empty list = consistent)."""
    root = Path(root)
    out: list[str] = []
    book = {s.label: s for s in book_statements(root / "book")}
    refs = test_references(root / "tests", package_calls(root / "flatbook"))
    for label, s in book.items():
        if label not in labels:
            out.append(f"{s.chapter}: {s.kind} {label!r} is not in flatbook.traceability.LABELS")
    for label, funcs in labels.items():
        if label not in book:
            out.append(f"LABELS has {label!r}, which no book chapter defines")
        if not funcs:
            out.append(f"LABELS[{label!r}] maps to no function")
        for f in funcs:
            try:
                obj = resolve(f)
            except ValueError as e:
                out.append(f"LABELS[{label!r}]: {e}")
                continue
            if not callable(obj):
                out.append(f"LABELS[{label!r}]: {f} is not callable")
            if f not in refs:
                out.append(f"LABELS[{label!r}]: no test references {f}")
    return out


def to_markdown(rows: Iterable[Row], myst: bool = True, max_cells: int = 4,
                max_files: int = 4) -> str:
    """The traceability table as Markdown.

    The tests column summarises by test file: ``test_bounds.py`` 5 + 2 indirect means five
    tests of that file reference a mapped function directly and two reach one through the
    package (:func:`package_calls`); the full list is ``Row.tests``.

    Args:
        myst: write MyST roles (``{prf:ref}`` for statements, ``{doc}`` for chapters), for
            ``{glue:md}`` with ``:format: myst``; False gives plain CommonMark.
        max_cells, max_files: list at most this many cells / test files per statement (then
            "+ N more").
    """
    head = ("| statement | flatbook function(s) | tests (per file) | checked in chapter cells |\n"
            "| --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        s = r.statement
        stmt = (f"{{prf:ref}}`{s.label}`" if myst else f"{s.kind} {s.title}") + f" `{s.label}`"
        funcs = "<br>".join(f"`{f.removeprefix('flatbook.')}`" for f in r.functions) or "—"
        per_file: dict[str, list[int]] = {}
        for t in r.tests:
            counts = per_file.setdefault(t.split("::")[0].removeprefix("tests/"), [0, 0])
            counts[t.endswith(" (indirect)")] += 1
        files = sorted(per_file.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        tests = "<br>".join(
            f"`{f}` {d}" + (f" + {i} indirect" if i else "") if d else f"`{f}` {i} indirect"
            for f, (d, i) in files[:max_files]
        ) or "—"
        if len(files) > max_files:
            extra = len(files) - max_files
            tests += f"<br>+ {extra} more file{'s' if extra > 1 else ''}"
        shown = list(r.cells[:max_cells])
        cells = ", ".join(
            (f"{{doc}}`{c.chapter}` cell {c.index}" if myst else f"{c.chapter} cell {c.index}")
            + (" (assert)" if c.asserts else "")
            for c in shown
        ) or "—"
        if len(r.cells) > max_cells:
            cells += f", + {len(r.cells) - max_cells} more"
        lines.append(f"| {stmt} | {funcs} | {tests} | {cells} |")
    return "\n".join(lines)
