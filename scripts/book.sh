#!/usr/bin/env bash
# Build the whole book to _build/html, executing every chapter at its default parameters.
# Strict: a warning, a broken reference or a raising cell fails the build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYDEVD_DISABLE_FILE_VALIDATION=1
.venv/bin/jupyter-book build . -W -n --keep-going "$@"
echo "[book] open $ROOT/_build/html/index.html"
