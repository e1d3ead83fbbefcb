"""Serve MathJax 3 from the built site, so that the book renders math offline.

MathJax comes in as a pinned Python dependency (``django-static-mathjax``), which installs
MathJax 3.2.2 under ``site-packages/mathjax/static/mathjax/es5``. At build time we copy the
parts the CHTML/TeX build needs into a staging folder, add that folder to
``html_static_path`` (not the book's ``_static``: Jupyter Book 1 adds a ``<script>`` tag for
every ``.js`` file there) and point ``mathjax_path`` at the copy.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ConfigError

KEEP = [
    "tex-mml-chtml.js",
    "output/chtml/fonts/woff-v2",
    "input/tex/extensions",
    "ui",
    "a11y",
    "sre",
    "adaptors",
]


def mathjax_es5_dir() -> Path:
    """Folder ``…/mathjax/es5`` of the installed ``django-static-mathjax`` package."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or spec.origin is None:
        raise ConfigError(
            "offline_mathjax: package 'django-static-mathjax' is not installed "
            "(it is pinned in requirements.txt; run scripts/setup.sh)"
        )
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise ConfigError(f"offline_mathjax: no tex-mml-chtml.js under {es5}")
    return es5


def _stage(app: Sphinx, config: Config) -> None:
    src = mathjax_es5_dir()
    stage = Path(app.doctreedir).parent / "mathjax-static"
    dest = stage / "mathjax" / "es5"
    if not (dest / "tex-mml-chtml.js").is_file():
        for rel in KEEP:
            s, d = src / rel, dest / rel
            if s.is_dir():
                shutil.copytree(s, d, dirs_exist_ok=True)
            elif s.is_file():
                d.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(s, d)
    config.html_static_path = [*list(config.html_static_path or []), str(stage)]
    config.mathjax_path = "mathjax/es5/tex-mml-chtml.js"


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", _stage, priority=900)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
