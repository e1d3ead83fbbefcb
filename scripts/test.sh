#!/usr/bin/env bash
# Run every test: lint, a strict build of the book at fast parameters (structure, references,
# citations, directives, glue), then pytest on the package and nbval on every chapter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYDEVD_DISABLE_FILE_VALIDATION=1
PY=.venv/bin/python

echo "[test] ruff"
.venv/bin/ruff check flatbook tests scripts bench _ext

echo "[test] preparing chapters with their fast test parameters in _build/fast"
# executed through the cache _build/.jupyter_cache-fast/<package hash>, reused by the editions
$PY scripts/prepare_fast_book.py --out _build/fast --cache _build/.jupyter_cache-fast

echo "[test] strict book build (-W -n) of the fast book"
.venv/bin/jupyter-book build _build/fast -W -n --keep-going --quiet

echo "[test] headless Chromium for the browser test (apt-get install when missing)"
bash scripts/ensure_chromium.sh || echo "[test] warning: no Chromium; tests/test_browser.py will fail" >&2

echo "[test] student edition and PDF of the fast book (from the same executed notebooks)"
bash scripts/editions.sh student --fast
if [ "${FLATBOOK_SKIP_BROWSER:-}" != "1" ]; then
  bash scripts/editions.sh pdf --fast
fi

echo "[test] pytest (package, browser) + nbval (chapters)"
set +e
FLATBOOK_FAST_HTML="$ROOT/_build/fast/_build/html" FLATBOOK_REQUIRE_EDITIONS=1 \
  $PY -m pytest tests _build/fast/book --nbval-lax --nbval-current-env -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
