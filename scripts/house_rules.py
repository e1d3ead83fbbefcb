"""Print the house-rule offenders (DESIGN.md, issue 23) of the given Python files or folders.

Rules, measured with ``ast``:
- a function (or method) has at most ``--max-lines`` code lines (non-blank lines of its body
  that are not comments, docstring excluded) and at most ``--max-params`` parameters (``self``
  / ``cls`` not counted);
- a module has at most ``--max-module`` lines;
- every public function or method (not a closure) and every function over 30 code lines
  has a docstring.

Usage: ``python scripts/house_rules.py flatbook/curvature.py flatbook/rules.py`` (exit status 1
when something is printed). ``--max-lines`` etc. override the limits.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef, src: list[str]) -> int:
    """Non-blank, non-comment source lines of ``fn``'s body, its docstring excluded."""
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    start, end = body[0].lineno, fn.end_lineno or body[-1].lineno
    return sum(1 for line in src[start - 1 : end]
               if line.strip() and not line.strip().startswith("#"))


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return len([n for n in names if n not in ("self", "cls")])


def _outer_functions(tree: ast.Module) -> Iterator[ast.AST]:
    """Functions at module level or in (nested) class bodies — not closures, which are private
    by construction."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        for child in getattr(node, "body", []):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield child
            elif isinstance(child, ast.ClassDef):
                stack.append(child)


def offences(path: Path, max_lines: int, max_params: int, max_module: int) -> Iterator[str]:
    """One message per broken rule in the file at ``path``."""
    text = path.read_text()
    src = text.splitlines()
    if len(src) > max_module:
        yield f"{path}: module has {len(src)} lines (> {max_module})"
    tree = ast.parse(text)
    outer = {id(f) for f in _outer_functions(tree)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        where = f"{path}:{node.lineno} {node.name}"
        n = _code_lines(node, src)
        if n > max_lines:
            yield f"{where}: {n} code lines (> {max_lines})"
        if _params(node) > max_params:
            yield f"{where}: {_params(node)} parameters (> {max_params})"
        public = id(node) in outer and not node.name.startswith("_")
        if (public or n > 30) and ast.get_docstring(node) is None:
            yield f"{where}: no docstring ({'public' if public else f'{n} code lines'})"


def main(argv: list[str] | None = None) -> int:
    """Check the files / folders given; print offenders; 1 if any."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--max-lines", type=int, default=60)
    ap.add_argument("--max-params", type=int, default=8)
    ap.add_argument("--max-module", type=int, default=600)
    args = ap.parse_args(argv)
    files = [f for p in args.paths for f in ([p] if p.is_file() else sorted(p.rglob("*.py")))]
    found = [m for f in files
             for m in offences(f, args.max_lines, args.max_params, args.max_module)]
    print("\n".join(found) if found else f"house rules: {len(files)} file(s) clean")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
