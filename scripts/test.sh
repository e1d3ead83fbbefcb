#!/usr/bin/env bash
# Run every test: lint; every chapter executed once under nbval at its fast parameters (a raising
# cell fails); a strict build of the book from those executed notebooks (structure, references,
# citations, directives, glue); the student edition and the PDF from the same notebooks; pytest
# on the package. Extra arguments go to the package pytest run (e.g. -k curvature).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYDEVD_DISABLE_FILE_VALIDATION=1
PY=.venv/bin/python
start=$SECONDS
stamp() { echo "[test] $1 ($((SECONDS - start)) s so far)"; }

stamp "ruff"
.venv/bin/ruff check flatbook tests scripts bench _ext

stamp "preparing chapters with their fast test parameters in _build/fast"
$PY scripts/prepare_fast_book.py --out _build/fast --no-execute

stamp "nbval: each chapter executed once; a notebook that passes keeps its outputs"
set +e
PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" $PY -m pytest _build/fast/book \
  --nbval-lax --nbval-current-env -p no:cacheprovider -p nbval_save --nbval-save
rc_nb=$?
set -e
if [ "$rc_nb" -eq 5 ]; then echo "[test] error: nbval collected no chapter" >&2; rc_nb=1; fi

rc_build=0
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
else
  echo "[test] a chapter failed under nbval: the book and its editions are not built" >&2
fi

stamp "pytest (package, editions, browser)"
set +e
FLATBOOK_FAST_HTML="$ROOT/_build/fast/_build/html" FLATBOOK_REQUIRE_EDITIONS=1 \
  $PY -m pytest tests -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] error: pytest collected no tests" >&2
  rc=1
fi
stamp "done (nbval rc $rc_nb, book rc $rc_build, pytest rc $rc)"
for r in "$rc_nb" "$rc_build" "$rc"; do [ "$r" -eq 0 ] || exit "$r"; done
exit 0
