"""Sphinx extension for the printed book: node handlers for the single-page HTML builder.

Sphinx looks up a node's visit/depart functions by builder name and falls back to the
builder's format ("html") only when *no* handler was registered for that name. Some
extensions of the book register handlers for ``singlehtml``, which hides the ``html``
handlers of the others (sphinx-proof's theorem nodes, sphinx-exercise's nodes, myst-nb's
cells) and makes ``jupyter-book build --builder singlehtml`` fail with "unknown node type".
This extension gives ``singlehtml`` every ``html`` handler it lacks. Enabled only in the
configuration of the PDF edition (``scripts/prepare_fast_book.py --print``).
"""

from __future__ import annotations

from sphinx.application import Sphinx


def _inherit_html_handlers(app: Sphinx) -> None:
    if app.builder.name != "singlehtml":
        return
    handlers = app.registry.translation_handlers
    single = handlers.setdefault("singlehtml", {})
    for node, visit_depart in handlers.get("html", {}).items():
        single.setdefault(node, visit_depart)


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("builder-inited", _inherit_html_handlers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
