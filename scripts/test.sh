#!/usr/bin/env bash
# Run every test: lint; every chapter executed once under nbval at its fast parameters (a raising
# cell fails) while the package tests run beside it on the other core; a strict build of the
# book from those executed notebooks (structure, references, citations, directives, glue); the
# student edition and the PDF from the same notebooks; then the tests that read the built book
# (browser, editions). Extra arguments go to both package pytest runs (e.g. -k curvature).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYDEVD_DISABLE_FILE_VALIDATION=1
PY=.venv/bin/python
start=$SECONDS
stamp() { echo "[test] $1 ($((SECONDS - start)) s so far)"; }
n_extra=$#  # with a selection (-k …) a run may select nothing; without one that is an error
no_tests() {
  [ "$1" -eq 5 ] || return 1
  if [ "$n_extra" -gt 0 ]; then echo "[test] $2: nothing selected"; return 2; fi
  echo "[test] error: $2 collected no tests" >&2; return 0
}

stamp "ruff"
.venv/bin/ruff check flatbook tests scripts bench _ext

stamp "preparing chapters with their fast test parameters in _build/fast"
$PY scripts/prepare_fast_book.py --out _build/fast --no-execute
mkdir -p _build/logs

stamp "package tests (log: _build/logs/pytest-package.log) beside nbval on the chapters"
set +e
$PY -m pytest tests -m "not built" -p no:cacheprovider "$@" > _build/logs/pytest-package.log 2>&1 &
pkg_pid=$!
PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" $PY -m pytest _build/fast/book \
  --nbval-lax --nbval-current-env -p no:cacheprovider -p nbval_save --nbval-save
rc_nb=$?
wait "$pkg_pid"
rc_pkg=$?
set -e
no_tests "$rc_nb" "nbval" && rc_nb=1
r=0; no_tests "$rc_pkg" "the package tests" || r=$?
case $r in 0) rc_pkg=1 ;; 2) rc_pkg=0 ;; esac
stamp "package tests finished (rc $rc_pkg):"
tail -n 40 _build/logs/pytest-package.log
[ "$rc_pkg" -eq 0 ] || cat _build/logs/pytest-package.log

rc_build=0; rc_built=0
if [ "$rc_nb" -eq 0 ]; then
  stamp "strict book build (-W -n) of the executed fast book"
  .venv/bin/jupyter-book build _build/fast -W -n --keep-going --quiet || rc_build=$?

  stamp "headless Chromium for the browser test (apt-get install when missing)"
  bash scripts/ensure_chromium.sh || echo "[test] warning: no Chromium; tests/test_browser.py will fail" >&2

  stamp "student edition and PDF of the fast book (from the same executed notebooks)"
  bash scripts/editions.sh student --fast --executed _build/fast || rc_build=$?
  if [ "${FLATBOOK_SKIP_BROWSER:-}" != "1" ]; then
    bash scripts/editions.sh pdf --fast --executed _build/fast || rc_build=$?
  fi

  stamp "tests of the built book (browser, editions)"
  set +e
  FLATBOOK_FAST_HTML="$ROOT/_build/fast/_build/html" FLATBOOK_REQUIRE_EDITIONS=1 \
    $PY -m pytest tests -m built -p no:cacheprovider "$@"
  rc_built=$?
  set -e
  r=0; no_tests "$rc_built" "the built-book tests" || r=$?
  case $r in 0) rc_built=1 ;; 2) rc_built=0 ;; esac
else
  echo "[test] a chapter failed under nbval: the book, its editions and their tests are skipped" >&2
  rc_build=1
fi
stamp "done (nbval rc $rc_nb, package rc $rc_pkg, book rc $rc_build, built-book tests rc $rc_built)"
for r in "$rc_nb" "$rc_pkg" "$rc_build" "$rc_built"; do [ "$r" -eq 0 ] || exit "$r"; done
exit 0
