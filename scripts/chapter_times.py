"""Per-chapter execution times of the last book build, as the README's Markdown table.

``python scripts/chapter_times.py [_build/execution-times.json]`` prints one row per chapter
(seconds, share of the total) and the total; ``--budget S`` exits 1 when the total exceeds S
seconds (the book build must stay within 15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table(times: dict[str, dict]) -> tuple[str, float]:
    total = sum(float(v.get("runtime_s") or 0) for v in times.values())
    rows = ["| chapter | execution (s) | share |", "|---|---:|---:|"]
    for doc, v in sorted(times.items(), key=lambda kv: -float(kv[1].get("runtime_s") or 0)):
        t = float(v.get("runtime_s") or 0)
        ok = "" if v.get("succeeded", True) else " (failed)"
        rows.append(f"| `{doc}`{ok} | {t:.0f} | {t / total:.0%} |" if total else
                    f"| `{doc}`{ok} | {t:.0f} | – |")
    rows.append(f"| **total** | **{total:.0f}** | |")
    return "\n".join(rows), total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default="_build/execution-times.json",
                    help="execution-times.json written by _ext/exec_times.py")
    ap.add_argument("--budget", type=float, default=None,
                    help="fail (exit 1) when the total execution exceeds this many seconds")
    a = ap.parse_args(argv)
    p = Path(a.path)
    if not p.is_file():
        print(f"error: {p} not found: build the book first (bash scripts/book.sh)",
              file=sys.stderr)
        return 2
    text, total = table(json.loads(p.read_text()))
    print(text)
    if a.budget is not None and total > a.budget:
        print(f"error: total execution {total:.0f} s exceeds the budget {a.budget:.0f} s",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
