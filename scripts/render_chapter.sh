#!/usr/bin/env bash
# Re-run one chapter with papermill parameters and render it with the book's configuration
# (theorem/proof/exercise boxes, citations, glued numbers), e.g.
#   bash scripts/render_chapter.sh ch01_hessian -p n_networks 24 -p width 16
# Writes _build/rerun/<chapter>/: book/<chapter>.ipynb (executed), glued.json (every glued
# number, also printed) and _build/html/book/<chapter>.html (open it in a browser).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
export PYDEVD_DISABLE_FILE_VALIDATION=1
exec .venv/bin/python scripts/render_chapter.py "$@"
