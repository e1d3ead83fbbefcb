"""Make the package's docstrings valid reStructuredText for the API page (``book/api.md``).

The docstrings are written for readers of the source: they use ``|x|`` for absolute values and
norms, which reStructuredText reads as substitution references (``|λ|`` → "Undefined
substitution referenced"). Before napoleon and autodoc parse a docstring, every ``|`` outside an
inline literal (double backquotes) is escaped. Runs with a priority lower (earlier) than
napoleon's default of 500.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _escape(line: str) -> str:
    parts = line.split("``")
    for i in range(0, len(parts), 2):  # even parts lie outside ``literals``
        parts[i] = parts[i].replace("\\|", "|").replace("|", "\\|")
    return "``".join(parts)


def _process(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    lines[:] = [_escape(line) for line in lines]


def setup(app: Sphinx) -> dict:
    app.connect("autodoc-process-docstring", _process, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
