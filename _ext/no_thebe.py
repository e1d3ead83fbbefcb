"""Drop sphinx-thebe's scripts from every page.

Jupyter Book 1 always loads ``sphinx_thebe``, which adds (twice) an inline script naming
``https://unpkg.com/thebe@…`` and ``sphinx-thebe.js``. This book has no live-code launch button
(``launch_buttons.thebe: false``), so those scripts do nothing but name an external host and
raise a duplicate-declaration error in the browser console. The book is offline by
construction: remove them.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _is_thebe(js: Any) -> bool:
    name = str(getattr(js, "filename", js) or "")
    body = str(getattr(js, "attributes", {}).get("body", ""))
    return "thebe" in name or "THEBE_JS_URL" in body


def _drop(app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    files = context.get("script_files")
    if files:
        context["script_files"] = [js for js in files if not _is_thebe(js)]


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", _drop, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
