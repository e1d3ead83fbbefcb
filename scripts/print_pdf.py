"""Print a single-page HTML build of the book to PDF in headless Chromium, after MathJax.

The book's ``singlehtml`` build (``jupyter-book build SRC --builder singlehtml``) is served on
127.0.0.1 and opened through chromedriver's WebDriver API — the same harness as the browser
test (``tests/browser/harness.py``), no extra Python package. Printing waits until
``MathJax.startup.promise`` has resolved (every formula typeset) and every image has loaded:
``chromium --print-to-pdf`` does not wait for MathJax, so it would print raw TeX. Collapsed
cell parts are removed when the source is prepared for print (``prepare_fast_book.py
--print``), and solution dropdowns are opened before printing. The page is printed with the
DevTools command ``Page.printToPDF`` (A4, backgrounds on).

Usage: python scripts/print_pdf.py _build/pdf/_build/singlehtml _build/flatbook.pdf
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import tempfile
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "_ext"))
from browser.harness import INSTALL_HINT, ChromeDriver, LoopbackServer, find_browser  # noqa: E402

WAIT_JS = """
const done = arguments[arguments.length - 1];
(async () => {
  for (const img of document.images) img.loading = "eager";
  for (const d of document.querySelectorAll("details")) d.open = true;   // dropdowns, on paper
  for (const t of document.querySelectorAll(".toggle-hidden")) t.classList.remove("toggle-hidden");
  const mj = window.MathJax && window.MathJax.startup ? window.MathJax.startup.promise : null;
  if (mj) await mj;
  await Promise.all([...document.images].map(img => img.complete ? null :
    new Promise(r => { img.addEventListener("load", r); img.addEventListener("error", r); })));
  done(JSON.stringify({
    mathjax: Boolean(mj),
    math: document.querySelectorAll("span.math, div.math").length,
    typeset: document.querySelectorAll("mjx-container").length,
    errors: document.querySelectorAll("mjx-merror").length,
    images: document.images.length,
    broken: [...document.images].filter(i => !(i.naturalWidth > 0)).length,
  }));
})().catch(e => done(JSON.stringify({error: String(e)})));
"""


def root_page(html_dir: Path) -> str:
    """The single page of a singlehtml build: Jupyter Book writes the root document
    (``book/intro.html``) and an ``index.html`` that only redirects to it."""
    index = (html_dir / "index.html").read_text(encoding="utf-8", errors="replace")
    m = re.search(r'http-equiv="Refresh"[^>]*url=([^"]+)"', index, flags=re.I)
    return m.group(1).strip() if m else "index.html"


def print_pdf(html_dir: Path, out: Path, page: str | None = None) -> dict:
    """Print ``html_dir/page`` (default: :func:`root_page`) to ``out``; return the page's
    MathJax / image counts.

    Raises RuntimeError if MathJax did not run, left errors, or an image did not load.
    """
    page = root_page(html_dir) if page is None else page
    if "/" in page:  # singlehtml writes links relative to the site root: print a copy there
        copy = html_dir / "__print__.html"
        copy.write_bytes((html_dir / page).read_bytes())
        try:
            return print_pdf(html_dir, out, copy.name)
        finally:
            copy.unlink()
    browser, driver = find_browser()
    if not (browser and driver):
        raise RuntimeError(f"headless Chromium not found (browser: {browser}, driver: "
                           f"{driver}); {INSTALL_HINT}")
    with LoopbackServer(html_dir) as server, tempfile.TemporaryDirectory() as tmp, \
            ChromeDriver(browser, driver, Path(tmp) / "profile") as chrome:
        chrome.get(server.base + page)
        info = json.loads(chrome.execute_async(WAIT_JS))
        if "error" in info or not info["mathjax"] or info["errors"] or info["broken"]:
            raise RuntimeError(f"page not ready to print: {info}")
        if info["math"] and info["typeset"] < info["math"]:
            raise RuntimeError(f"MathJax typeset {info['typeset']} of {info['math']} formulas")
        cdp = partial(chrome.cmd, "POST", "/goog/cdp/execute")
        pdf = cdp({"cmd": "Page.printToPDF", "params": {
            "printBackground": True, "paperWidth": 8.27, "paperHeight": 11.69,
            "marginTop": 0.5, "marginBottom": 0.5, "marginLeft": 0.5, "marginRight": 0.5}})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(pdf["data"]))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("html_dir", type=Path, help="folder of the singlehtml build")
    ap.add_argument("out", type=Path, help="PDF to write")
    args = ap.parse_args()
    info = print_pdf(args.html_dir.resolve(), args.out)
    print(f"[pdf] {args.out} ({args.out.stat().st_size / 1e6:.1f} MB; {info['typeset']} "
          f"formulas, {info['images']} images)")


if __name__ == "__main__":
    main()
