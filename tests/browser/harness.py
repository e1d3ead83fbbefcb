"""Check built HTML pages in headless Chromium: local MathJax typeset, images loaded, loopback only.

Three pieces, with no dependency beyond the standard library and Debian's ``chromium`` +
``chromium-driver`` packages:

* :class:`LoopbackServer` serves a folder on ``127.0.0.1`` (a free port) from a thread and
  records every request it answers (path and HTTP status);
* :class:`ChromeDriver` drives ``chromedriver`` through its W3C WebDriver HTTP API (urllib, no
  proxy), with Chrome's DevTools performance log switched on so that every network request a
  page makes is recorded, and full-page screenshots through the DevTools protocol;
* :func:`check_page` opens one URL, waits for the page, for ``MathJax.startup.promise`` and for
  every ``<img>``, and returns a :class:`PageReport` whose :meth:`PageReport.problems` lists
  what is wrong (empty list: the page is fine).

The pure functions :func:`find_raw_tex`, :func:`non_loopback` and :func:`perf_log_urls` hold the
rules and are unit-tested without a browser.
"""

from __future__ import annotations

import base64
import http.server
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

# Flags from the issue, plus: no proxy, and every host name except loopback resolves to
# "not found", so a stray external request fails fast (it is still recorded and reported).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = (
    "install Debian's packages with `bash scripts/ensure_chromium.sh` (as root; it runs "
    "`apt-get install -y chromium chromium-driver`), or set FLATBOOK_SKIP_BROWSER=1 to skip "
    "the browser test explicitly"
)
# URL schemes that never touch the network (chrome:… are the browser's own start-up pages).
LOCAL_SCHEMES = {"data", "blob", "about", "chrome", "chrome-untrusted", "chrome-extension",
                 "devtools"}
# Status codes >= 400 for these paths are browser habits, not page defects.
IGNORED_HTTP_ERRORS = {"/favicon.ico"}


# ----------------------------------------------------------------------------- pure rules

_RAW_TEX = [
    ("display math $$…$$", re.compile(r"\$\$")),
    ("inline math \\(…\\)", re.compile(r"\\\(")),
    ("display math \\[…\\]", re.compile(r"\\\[")),
    ("environment \\begin{…}", re.compile(r"\\begin\{")),
    # Pandoc's rule for inline $…$: the opening $ has a non-space on its right, the closing $ a
    # non-space (not a backslash) on its left and no digit after it ("$5 and $10" is not math).
    (
        "inline math $…$",
        re.compile(r"(?<![\\$])\$(?=[^\s$])[^$\n]{1,300}?(?<=[^\s\\$])\$(?![\d$])"),
    ),
]


def find_raw_tex(texts: list[str]) -> list[str]:
    """Raw TeX delimiters left in visible text: ``$…$``, ``$$``, ``\\(``, ``\\[``, ``\\begin{``.

    ``texts`` are the visible text blocks of a page outside code, ``<script>``/``<style>`` and
    MathJax output (one string per block element). Returns one ``"kind: excerpt"`` string per
    hit, at most 10.
    """
    hits: list[str] = []
    for text in texts:
        for kind, pattern in _RAW_TEX:
            m = pattern.search(text)  # the first hit of each kind per block is enough
            if m:
                a, b = max(0, m.start() - 30), min(len(text), m.end() + 30)
                hits.append(f"{kind}: …{text[a:b]}…")
                if len(hits) >= 10:
                    return hits
    return hits


def is_loopback_url(url: str) -> bool:
    """True for URLs that stay on this machine: ``data:``/``blob:``/``about:`` or a loopback host.

    Loopback hosts: ``localhost`` and any address in 127.0.0.0/8 or ``::1``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in LOCAL_SCHEMES:
        return True
    if scheme not in {"http", "https", "ws", "wss"}:
        return False  # file:, chrome:, ftp:, … are not the served book
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def non_loopback(urls: list[str]) -> list[str]:
    """The URLs (deduplicated, in order) that would leave the loopback interface."""
    return list(dict.fromkeys(u for u in urls if not is_loopback_url(u)))


def perf_log_urls(entries: list[dict]) -> list[str]:
    """Request URLs in chromedriver's ``performance`` log (DevTools ``Network.*`` events).

    Each entry's ``message`` is a JSON string ``{"message": {"method": …, "params": …}}``;
    ``Network.requestWillBeSent`` (every HTTP request, including redirects and failed ones) and
    ``Network.webSocketCreated`` carry the URL.
    """
    urls: list[str] = []
    for entry in entries:
        try:
            msg = json.loads(entry["message"])["message"]
        except (KeyError, TypeError, ValueError):
            continue
        params = msg.get("params") or {}
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(params.get("request", {}).get("url", ""))
        elif msg.get("method") == "Network.webSocketCreated":
            urls.append(params.get("url", ""))
    return [u for u in urls if u]


# ----------------------------------------------------------------------------- server


class LoopbackServer:
    """Serve ``root`` on ``http://127.0.0.1:<free port>/`` from a daemon thread.

    ``log`` holds ``(path, status)`` for every answered request, in order.
    Use as a context manager.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.log: list[tuple[str, int]] = []
        log = self.log

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                log.append((self.path.split("?")[0], int(getattr(code, "value", code))))

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # keep pytest output clean; requests are in `log`

        handler = partial(Handler, directory=str(self.root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}/"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LoopbackServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def errors_since(self, start: int) -> list[str]:
        """``"STATUS path"`` for requests answered with status >= 400 since ``log[start]``."""
        return [f"{code} {path}" for path, code in self.log[start:]
                if code >= 400 and path not in IGNORED_HTTP_ERRORS]


# ----------------------------------------------------------------------------- webdriver


class WebDriverError(RuntimeError):
    """chromedriver answered a command with an error."""


def find_browser() -> tuple[str | None, str | None]:
    """Paths of the Chromium binary and of ``chromedriver`` (``None`` where not found).

    ``FLATBOOK_CHROMIUM`` / ``FLATBOOK_CHROMEDRIVER`` override the search on ``PATH``.
    """
    env_browser = os.environ.get("FLATBOOK_CHROMIUM")
    names = [env_browser] if env_browser else BROWSER_NAMES
    browser = next((p for p in map(shutil.which, names) if p), None)
    driver = shutil.which(os.environ.get("FLATBOOK_CHROMEDRIVER") or "chromedriver")
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _diagnose(browser: str, profile: Path) -> str:
    """Run the browser alone (``--dump-dom about:blank``) and return its exit code and stderr."""
    cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}-diagnose", "--dump-dom",
           "about:blank"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"running {browser} alone failed: {e}"
    return f"{browser} alone exited {r.returncode}; stderr (end):\n{r.stderr[-1500:]}"


class ChromeDriver:
    """A headless Chromium session driven through chromedriver's W3C HTTP API.

    ``profile`` is a fresh, empty folder for ``--user-data-dir``; chromedriver's output goes to
    ``profile/../chromedriver.log``. When the browser does not start, the error quotes the
    browser's own stderr. Use as a context manager (quits the browser and driver).
    """

    def __init__(self, browser: str, driver: str, profile: Path,
                 window: tuple[int, int] = (1280, 1400)) -> None:
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        profile.mkdir(parents=True, exist_ok=True)
        self.logfile = profile.parent / "chromedriver.log"
        self._logfh = open(self.logfile, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([driver, f"--port={port}"],
                                     stdout=self._logfh, stderr=subprocess.STDOUT)
        self.session: str | None = None
        try:
            self._wait_ready(30.0)
            caps = {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": browser,
                    "args": [*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             f"--window-size={window[0]},{window[1]}"],
                },
                "goog:loggingPrefs": {"performance": "ALL", "browser": "ALL"},
                "timeouts": {"pageLoad": 60_000, "script": 90_000},
            }
            value = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
            self.session = value["sessionId"]
            self.get("about:blank")  # let the start-up tab settle, then forget its requests
            self.log("performance")
            self.log("browser")
        except WebDriverError as e:
            self.close()
            raise WebDriverError(f"{e}\n{_diagnose(browser, profile)}") from None
        except BaseException:
            self.close()
            raise

    # -- plumbing
    def _call(self, method: str, path: str, body: dict | None = None,
              timeout: float = 120.0) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(req, timeout=timeout) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            try:
                value = json.load(e)["value"]
                msg = f"{value.get('error')}: {str(value.get('message'))[:800]}"
            except (ValueError, KeyError, TypeError):
                msg = str(e)
            raise WebDriverError(f"chromedriver {method} {path}: {msg}") from None

    def _wait_ready(self, timeout: float) -> None:
        t_end = time.monotonic() + timeout
        while time.monotonic() < t_end:
            if self.proc.poll() is not None:
                raise WebDriverError(f"chromedriver exited with code {self.proc.returncode}")
            try:
                if self._call("GET", "/status", timeout=2.0).get("ready"):
                    return
            except (OSError, WebDriverError):
                pass
            time.sleep(0.1)
        raise WebDriverError(f"chromedriver not ready after {timeout:.0f} s")

    def cmd(self, method: str, path: str, body: dict | None = None) -> object:
        """Run a WebDriver command of this session (``path`` relative to ``/session/{id}``)."""
        return self._call(method, f"/session/{self.session}{path}", body)

    # -- commands
    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def execute_async(self, script: str, *args: object) -> object:
        return self.cmd("POST", "/execute/async", {"script": script, "args": list(args)})

    def log(self, kind: str) -> list[dict]:
        """Drain chromedriver's ``kind`` log (``performance`` or ``browser``)."""
        return self.cmd("POST", "/se/log", {"type": kind})  # type: ignore[return-value]

    def screenshot(self, path: Path, max_height: int = 12_000) -> None:
        """Save a PNG of the whole page (height capped at ``max_height`` px) to ``path``."""
        size_js = ("const e = document.documentElement;"
                   "return [window.innerWidth,"
                   "        Math.max(e.scrollHeight, document.body.scrollHeight)];")
        w, h = self.cmd("POST", "/execute/sync", {"script": size_js, "args": []})
        # Make the viewport as tall as the page, so the page lays out and paints all of it.
        cdp = partial(self.cmd, "POST", "/goog/cdp/execute")
        cdp({"cmd": "Emulation.setDeviceMetricsOverride", "params": {
            "width": w, "height": min(h, max_height), "deviceScaleFactor": 1, "mobile": False}})
        try:
            self.execute_async("requestAnimationFrame(() => requestAnimationFrame("
                               "arguments[arguments.length - 1]));")
            shot = cdp({"cmd": "Page.captureScreenshot", "params": {"format": "png"}})
        finally:
            cdp({"cmd": "Emulation.clearDeviceMetricsOverride", "params": {}})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        if self.session is not None:
            try:
                self._call("DELETE", f"/session/{self.session}", timeout=30.0)
            except (OSError, WebDriverError):
                pass
            self.session = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logfh.close()

    def __enter__(self) -> ChromeDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------- page check

# Runs in the page (WebDriver async script; the last argument is the callback). Waits for the
# load event, for MathJax's start-up typesetting and for every image (lazy ones made eager),
# then reports what a reader would see.
_PAGE_PROBE = r"""
const done = arguments[arguments.length - 1];
const budget = arguments[0];
const t0 = performance.now();
const left = () => Math.max(0, budget - (performance.now() - t0));
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const out = {};
  while (document.readyState !== 'complete' && left() > 0) await sleep(25);
  // Sphinx writes math as span.math / div.math; MathJax replaces their TeX by mjx-container.
  const mathEls = [...document.querySelectorAll('span.math, div.math')];
  out.mathjax_scripts = [...document.scripts].map(s => s.src).filter(s => /mathjax/i.test(s));
  out.n_math = mathEls.length;
  // MathJax is a deferred script: after the load event it has run, or it never will (a short
  // grace period covers a script added late).
  const loaded = () => window.MathJax && MathJax.version && MathJax.startup
                       && MathJax.startup.promise;
  if (out.mathjax_scripts.length || mathEls.length) {
    const t1 = performance.now();
    while (!loaded() && performance.now() - t1 < 300 && left() > 0) await sleep(25);
    if (loaded()) {
      try {
        const ok = await Promise.race([MathJax.startup.promise.then(() => true),
                                       sleep(left()).then(() => false)]);
        if (!ok) out.mathjax_error = 'MathJax.startup.promise did not resolve in time';
      } catch (e) { out.mathjax_error = 'MathJax start-up failed: ' + e; }
      out.mathjax_version = MathJax.version || null;
    }
  }
  out.n_mjx = document.querySelectorAll('mjx-container').length;
  out.untypeset = mathEls.filter(e => !e.querySelector('mjx-container'))
                         .map(e => e.textContent.trim().slice(0, 80));
  // TeX errors: merror nodes, and undefined macros (MathJax's noundefined extension shows them
  // as red mtext "\\name"), read from MathJax's own list of typeset expressions.
  const merrors = [];
  try {
    const doc = loaded() && MathJax.startup.document;
    for (const item of doc ? doc.math : []) {
      item.root.walkTree(node => {
        if (node.isKind('merror')) {
          merrors.push(`${node.attributes.get('data-mjx-error') || 'error'} in ${item.math}`);
        } else if (node.isKind('mtext') && node.attributes.get('mathcolor') === 'red') {
          const t = node.childNodes.map(c => c.getText ? c.getText() : '').join('');
          if (t.startsWith('\\')) merrors.push(`undefined macro ${t} in ${item.math}`);
        }
      });
    }
  } catch (e) { merrors.push('could not inspect MathJax output: ' + e); }
  if (!merrors.length) {  // fall back on the rendered output
    for (const e of document.querySelectorAll('mjx-merror'))
      merrors.push(e.getAttribute('data-mjx-error') || e.textContent.slice(0, 80));
  }
  out.merrors = [...new Set(merrors)];
  // images: make lazy ones eager, wait for each to load or fail
  const imgs = [...document.images];
  for (const im of imgs) if (im.loading === 'lazy') im.loading = 'eager';
  await Promise.race([
    Promise.all(imgs.map(im => (im.complete && im.src) ? Promise.resolve() : new Promise(r => {
      im.addEventListener('load', r, {once: true});
      im.addEventListener('error', r, {once: true});
    }))),
    sleep(left())]);
  out.images = imgs.map(im => ({src: im.currentSrc || im.src || im.outerHTML.slice(0, 120),
                                complete: im.complete, width: im.naturalWidth}));
  // visible text outside code and MathJax output, one string per block element
  const skip = 'script, style, noscript, template, pre, code, kbd, samp, textarea, '
             + '.highlight, mjx-container, mjx-assistive-mml, svg, math';
  const blocks = new Map();
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || !n.nodeValue.trim() || el.closest(skip)) continue;
    if (!el.getClientRects().length || getComputedStyle(el).visibility === 'hidden') continue;
    const block = el.closest('p, li, dt, dd, td, th, h1, h2, h3, h4, h5, h6, figcaption, '
                             + 'caption, blockquote, div, section, article, main, body');
    blocks.set(block, (blocks.get(block) || '') + n.nodeValue);
  }
  out.texts = [...blocks.values()];
  out.resources = performance.getEntriesByType('resource').map(e => e.name);
  out.title = document.title;
  out.elapsed_ms = performance.now() - t0;
  done(out);
})().catch(e => done({fatal: String(e && e.stack || e)}));
"""


@dataclass
class PageReport:
    """What :func:`check_page` saw on one page."""

    url: str
    n_math: int = 0
    n_mjx: int = 0
    mathjax_version: str | None = None
    mathjax_scripts: list[str] = field(default_factory=list)
    mathjax_error: str | None = None
    untypeset: list[str] = field(default_factory=list)
    merrors: list[str] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)
    broken_images: list[str] = field(default_factory=list)
    n_images: int = 0
    requests: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)
    http_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    fatal: str | None = None

    def problems(self) -> list[str]:
        """Human-readable defects; empty when the page is fine."""
        p: list[str] = []
        if self.fatal:
            p.append(f"page probe failed: {self.fatal}")
        if self.mathjax_error:
            p.append(self.mathjax_error)
        if self.n_math and not self.mathjax_version:
            p.append(f"{self.n_math} math elements but MathJax did not load "
                     f"(scripts: {self.mathjax_scripts or 'none'})")
        bad_mj = [s for s in self.mathjax_scripts if not is_loopback_url(s)]
        if bad_mj:
            p.append(f"MathJax is not the local copy: {bad_mj}")
        if self.untypeset:
            p.append(f"{len(self.untypeset)} of {self.n_math} math elements not typeset, "
                     f"e.g. {self.untypeset[:3]}")
        if self.merrors:
            p.append(f"MathJax errors: {self.merrors[:5]}")
        if self.raw_tex:
            p.append(f"raw TeX in visible text: {self.raw_tex[:5]}")
        if self.broken_images:
            p.append(f"{len(self.broken_images)} of {self.n_images} images did not load: "
                     f"{self.broken_images[:5]}")
        if self.external:
            p.append(f"requests left loopback: {self.external[:10]}")
        if self.http_errors:
            p.append(f"server answered errors: {self.http_errors[:10]}")
        return p


def check_page(driver: ChromeDriver, server: LoopbackServer, url: str,
               screenshot: Path | None = None, budget_s: float = 30.0) -> PageReport:
    """Open ``url`` in ``driver`` and report math, images, requests (see :class:`PageReport`).

    ``server`` is the :class:`LoopbackServer` serving ``url``; its request log (status >= 400)
    and the browser's DevTools network log plus resource timing (any URL off loopback) are
    checked. Saves a full-page PNG to ``screenshot`` when given.
    """
    driver.log("performance")  # drain what earlier pages left
    driver.log("browser")
    start = len(server.log)
    driver.get(url)
    out = driver.execute_async(_PAGE_PROBE, int(budget_s * 1000))
    assert isinstance(out, dict)
    if screenshot is not None:
        driver.screenshot(screenshot)
    requests = [*perf_log_urls(driver.log("performance")), url, *out.get("resources", [])]
    console = [f"{e.get('level')}: {e.get('message', '')[:300]}" for e in driver.log("browser")
               if e.get("level") == "SEVERE"]
    imgs = out.get("images", [])
    return PageReport(
        url=url,
        n_math=out.get("n_math", 0),
        n_mjx=out.get("n_mjx", 0),
        mathjax_version=out.get("mathjax_version"),
        mathjax_scripts=out.get("mathjax_scripts", []),
        mathjax_error=out.get("mathjax_error"),
        untypeset=out.get("untypeset", []),
        merrors=out.get("merrors", []),
        raw_tex=find_raw_tex(out.get("texts", [])),
        broken_images=[i["src"] for i in imgs if not (i["complete"] and i["width"] > 0)],
        n_images=len(imgs),
        requests=list(dict.fromkeys(requests)),
        external=non_loopback(requests),
        http_errors=server.errors_since(start),
        console_errors=console,
        fatal=out.get("fatal"),
    )
