#!/usr/bin/env bash
# Build an edition of the book from the executed notebooks of one shared execution cache.
#   bash scripts/editions.sh student   # student edition (solutions hidden) -> _build/student/_build/html
#   bash scripts/editions.sh pdf       # the whole book as one PDF           -> _build/flatbook.pdf
#   bash scripts/editions.sh all       # both
# Add --fast to build at the chapters' fast test parameters (what scripts/test.sh checks);
# add --executed DIR to render the notebooks of DIR (a prepared book whose chapters were executed
# under nbval by scripts/test.sh) with execution off instead of executing through the cache.
# Notebooks are executed once per checkout and reused by every edition: the cache lives in
# _build/.jupyter_cache[-fast]/<hash of flatbook/*.py>, so a change to the package (or to a
# notebook's code) re-executes. The instructor edition is the default build (scripts/book.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
what="${1:-}"; shift || true
params=default; suffix=""; strict=(-W -n --keep-going); executed=()
while [ $# -gt 0 ]; do
  case "$1" in
    --fast) params=fast; suffix="-fast" ;;
    --executed) [ $# -ge 2 ] || { echo "error: --executed needs a folder" >&2; exit 2; }
                executed=(--executed "$2"); shift ;;
    *) echo "usage: bash scripts/editions.sh student|pdf|all [--fast] [--executed DIR]" >&2
       exit 2 ;;
  esac
  shift
done
case "$what" in student|pdf|all) ;; *)
  echo "usage: bash scripts/editions.sh student|pdf|all [--fast]" >&2; exit 2 ;;
esac
bash scripts/setup.sh
export PYDEVD_DISABLE_FILE_VALIDATION=1
PY=.venv/bin/python
CACHE="_build/.jupyter_cache$suffix"
if [ ${#executed[@]} -gt 0 ]; then source_opts=("${executed[@]}"); else source_opts=(--cache "$CACHE"); fi

if [ "$what" = student ] || [ "$what" = all ]; then
  $PY scripts/prepare_fast_book.py --out "_build/student$suffix" --edition student \
    --params "$params" "${source_opts[@]}"
  .venv/bin/jupyter-book build "_build/student$suffix" "${strict[@]}" --quiet
  echo "[editions] student edition: $ROOT/_build/student$suffix/_build/html/index.html"
fi
if [ "$what" = pdf ] || [ "$what" = all ]; then
  $PY scripts/prepare_fast_book.py --out "_build/pdf$suffix" --edition instructor --print \
    --params "$params" "${source_opts[@]}"
  .venv/bin/jupyter-book build "_build/pdf$suffix" --builder singlehtml "${strict[@]}" --quiet
  bash scripts/ensure_chromium.sh
  $PY scripts/print_pdf.py "_build/pdf$suffix/_build/singlehtml" "_build/flatbook$suffix.pdf"
fi
