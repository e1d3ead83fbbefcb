"""The built book in a real browser: every page of ``_toc.yml`` opened in headless Chromium.

For each page (served from the fast build, ``FLATBOOK_FAST_HTML``, on 127.0.0.1) we wait for
``MathJax.startup.promise`` and for every image, then require that

* MathJax was loaded from the served book (the local copy) and typeset every Sphinx math
  element (``span.math`` / ``div.math`` holds an ``mjx-container``), with no ``mjx-merror``;
* no raw TeX (``$…$``, ``$$``, ``\\(``, ``\\[``, ``\\begin{``) is left in visible text outside code;
* every ``<img>`` loaded (``naturalWidth > 0``) and the server answered no request with >= 400;
* no request left loopback (Chrome's DevTools network log and the resource timing API).

A full-page screenshot of each page lands in ``_build/artifacts/screenshots/``. The checker
itself is tested on small hand-made pages (a broken image, an external script, raw ``$x$``, a
TeX error, math without MathJax) that must fail, and a correct page that must pass.

Needs Debian's ``chromium`` and ``chromium-driver`` (``scripts/ensure_chromium.sh`` installs
them); without them these tests fail, unless ``FLATBOOK_SKIP_BROWSER=1`` skips them explicitly.
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "_ext"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from browser.harness import (  # noqa: E402
    INSTALL_HINT,
    ChromeDriver,
    LoopbackServer,
    check_page,
    find_browser,
    find_raw_tex,
    is_loopback_url,
    non_loopback,
    perf_log_urls,
)
from prepare_fast_book import toc_files  # noqa: E402

pytestmark = pytest.mark.built  # needs the fast book built by scripts/test.sh

TOC_PAGES = toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
SCREENSHOTS = ROOT / "_build" / "artifacts" / "screenshots"
SKIP = os.environ.get("FLATBOOK_SKIP_BROWSER", "") == "1"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromeDriver]:
    """One headless Chromium (fresh profile) for the whole module."""
    if SKIP:
        pytest.skip("FLATBOOK_SKIP_BROWSER=1: browser tests skipped on request")
    browser, driver = find_browser()
    if not (browser and driver):
        pytest.fail(f"headless Chromium is not installed (browser: {browser}, chromedriver: "
                    f"{driver}); {INSTALL_HINT}", pytrace=False)
    with ChromeDriver(browser, driver, tmp_path_factory.mktemp("chromium") / "profile") as d:
        yield d


@pytest.fixture(scope="module")
def book_server() -> Iterator[LoopbackServer]:
    """The fast build's HTML on 127.0.0.1; stale screenshots removed."""
    env = os.environ.get("FLATBOOK_FAST_HTML")
    html = Path(env) if env else ROOT / "_build" / "fast" / "_build" / "html"
    if not (html / "index.html").is_file():
        if env:
            pytest.fail(f"FLATBOOK_FAST_HTML={env} holds no built book (no index.html)",
                        pytrace=False)
        pytest.skip(f"no built book at {html} (scripts/test.sh builds it first)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("*.png"):
        old.unlink()
    with LoopbackServer(html) as server:
        yield server


# ----------------------------------------------------------------------------- the book


@pytest.mark.parametrize("page", TOC_PAGES, ids=[Path(p).name for p in TOC_PAGES])
def test_book_page_in_browser(page: str, chrome: ChromeDriver,
                              book_server: LoopbackServer) -> None:
    html_file = book_server.root / f"{page}.html"
    assert html_file.is_file(), f"{page} is in _toc.yml but {html_file} was not built"
    shot = SCREENSHOTS / f"{page.replace('/', '__')}.png"
    report = check_page(chrome, book_server, f"{book_server.base}{page}.html", shot)
    problems = report.problems()
    # the probe must see what the static HTML holds (guards against a checker that sees nothing)
    static = html_file.read_text(encoding="utf-8")
    n_math_static = len(re.findall(r"<(?:span|div)\b[^>]*\bclass=\"math\b", static))
    if report.n_math != n_math_static:
        problems.append(f"browser saw {report.n_math} math elements, HTML has {n_math_static}")
    n_img_static = len(re.findall(r"<img\b", static))
    if report.n_images != n_img_static:
        problems.append(f"browser saw {report.n_images} images, HTML has {n_img_static}")
    assert shot.is_file() and shot.stat().st_size > 1000, f"no screenshot at {shot}"
    context = "\n  ".join(["", *report.console_errors]) if report.console_errors else " none"
    assert not problems, (f"{page}: " + "\n  ".join(problems)
                          + f"\n(console errors:{context})\n(screenshot: {shot})")


# ----------------------------------------------------------------------------- the checker


def _png(width: int, height: int) -> bytes:
    """A valid RGB PNG of one grey colour."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + b"\x80\x80\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


# What Sphinx writes for math (MathJax 3, loaded from the served site).
_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>t</title>
<script>window.MathJax = {"options": {"processHtmlClass":
  "tex2jax_process|mathjax_process|math|output_area"}}</script>
<script defer src="mathjax/tex-mml-chtml.js"></script></head>
<body><section class="tex2jax_ignore mathjax_ignore">"""
_GOOD_BODY = r"""
<p>Inline <span class="math notranslate nohighlight">\(H = \nabla^2 L(\theta)\)</span> and</p>
<div class="math notranslate nohighlight">\[\mathrm{tr}\, H = \frac{1}{n}\sum_i \|J_i\|^2\]</div>
<p>Prose with dollars that is not math: it costs $5 and $10.</p>
<pre>echo $HOME and \(not math\) in code</pre><p><code>$x$</code> in inline code.</p>
<img src="ok.png" alt="figure">
<img src="ok.png" alt="lazy figure far below" loading="lazy" style="margin-top: 4000px">
"""
BAD_PAGES = {
    "broken_image": (_HEAD + '<img src="missing.png">', ["images did not load", "404"]),
    "corrupt_image": (_HEAD + '<img src="corrupt.png">', ["images did not load"]),
    "external_script": (_HEAD + '<script src="http://example.com/lib.js"></script>',
                        ["left loopback", "http://example.com/lib.js"]),
    "external_image": (_HEAD + '<img src="https://example.org/fig.png">',
                       ["left loopback", "images did not load"]),
    "external_fetch": (_HEAD + "<script>fetch('https://example.net/data.json')"
                       ".catch(() => 0)</script>", ["left loopback"]),
    "cdn_mathjax": ('<!doctype html><html><head><script defer src="https://cdn.jsdelivr.net/'
                    'npm/mathjax@3/es5/tex-mml-chtml.js"></script></head><body><span class='
                    '"math notranslate nohighlight">\\(x\\)</span>',
                    ["left loopback", "MathJax did not load", "not typeset"]),
    "no_mathjax": ('<!doctype html><html><body><p>Loss <span class="math notranslate '
                   'nohighlight">\\(L(\\theta)\\)</span></p>',
                   ["MathJax did not load", "not typeset", "raw TeX"]),
    "missing_mathjax_file": (_HEAD.replace("mathjax/tex-mml", "mathjax/nope/tex-mml")
                             + '<span class="math notranslate nohighlight">\\(x\\)</span>',
                             ["MathJax did not load", "404"]),
    "raw_dollar_math": (_HEAD + r"<p>the loss $L(\theta)$ is small</p>", ["raw TeX"]),
    "raw_display_math": (_HEAD + "<p>$$\\sum_i x_i$$</p>", ["raw TeX"]),
    "tex_error": (_HEAD + '<span class="math notranslate nohighlight">\\(\\frca{1}{2}\\)'
                  "</span>", ["MathJax errors", "undefined macro", "frca"]),
    "tex_parse_error": (_HEAD + '<div class="math notranslate nohighlight">\\[x^2^3\\]</div>',
                        ["MathJax errors", "Double exponent", "x^2^3"]),
}


@pytest.fixture(scope="module")
def mini_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackServer]:
    """Hand-made pages next to the pinned MathJax, served on 127.0.0.1."""
    from offline_mathjax import mathjax_es5_dir

    site = tmp_path_factory.mktemp("site")
    (site / "mathjax").symlink_to(mathjax_es5_dir(), target_is_directory=True)
    (site / "ok.png").write_bytes(_png(40, 30))
    (site / "corrupt.png").write_bytes(b"this is not a PNG")
    (site / "good.html").write_text(_HEAD + _GOOD_BODY + "</body></html>")
    for name, (html, _) in BAD_PAGES.items():
        (site / f"{name}.html").write_text(html + "</body></html>")
    with LoopbackServer(site) as server:
        yield server


def test_checker_passes_a_good_page(chrome: ChromeDriver, mini_site: LoopbackServer) -> None:
    report = check_page(chrome, mini_site, mini_site.base + "good.html")
    assert report.problems() == []
    assert report.n_math == 2 and report.n_mjx == 2 and report.mathjax_version == "3.2.2"
    assert report.n_images == 2 and not report.broken_images
    assert any(u.endswith("/mathjax/tex-mml-chtml.js") for u in report.requests)
    assert any(u.endswith("/ok.png") for u in report.requests)


@pytest.mark.parametrize("name", list(BAD_PAGES))
def test_checker_fails_a_broken_page(name: str, chrome: ChromeDriver,
                                     mini_site: LoopbackServer) -> None:
    report = check_page(chrome, mini_site, f"{mini_site.base}{name}.html", budget_s=10.0)
    text = "\n".join(report.problems())
    for expected in BAD_PAGES[name][1]:
        assert expected in text, f"{name}: expected {expected!r} in problems:\n{text}"


def test_find_raw_tex() -> None:
    assert find_raw_tex(["the loss $L(\\theta)$ is small"])
    assert find_raw_tex(["$x$"])
    assert find_raw_tex(["a \\(x\\) b"]) and find_raw_tex(["\\[x\\]"])
    assert find_raw_tex(["$$x$$"]) and find_raw_tex(["\\begin{align} x \\end{align}"])
    assert find_raw_tex(["it costs $5 and $10", "a lone $ sign", "US$ 3", "x = 2"]) == []
    assert find_raw_tex(["$ 5 $"]) == []  # spaces inside the delimiters: not TeX math
    # separate blocks are not joined into one math span
    assert find_raw_tex(["price $3", "$4 later"]) == []


def test_loopback_rules() -> None:
    for url in ["http://127.0.0.1:8000/a.js", "http://localhost/x", "http://[::1]:5/",
                "http://127.9.9.9/", "data:image/png;base64,AAAA", "blob:http://127.0.0.1/x",
                "about:blank"]:
        assert is_loopback_url(url), url
    for url in ["https://cdn.jsdelivr.net/npm/mathjax@3", "http://10.0.0.1/", "//example.com/x",
                "file:///etc/passwd", "wss://example.com/s", "http://127.0.0.1.example.com/"]:
        assert not is_loopback_url(url), url
    assert non_loopback(["http://127.0.0.1/a", "https://x.org/b", "https://x.org/b"]) == [
        "https://x.org/b"]


def test_perf_log_urls() -> None:
    def entry(method: str, params: dict) -> dict:
        return {"level": "INFO", "message": json.dumps({"message": {"method": method,
                                                                    "params": params}})}
    entries = [entry("Network.requestWillBeSent", {"request": {"url": "https://a.org/x.js"}}),
               entry("Network.responseReceived", {"response": {"url": "https://b.org/"}}),
               entry("Network.webSocketCreated", {"url": "wss://c.org/s"}),
               {"level": "INFO", "message": "not json"}]
    assert perf_log_urls(entries) == ["https://a.org/x.js", "wss://c.org/s"]
