"""The extended study: a second architecture at CPU scale, run on request.

``python scripts/extended_study.py [--results-dir DIR] [--settings digits-lenet mnist1d-mlp]``
computes every missing run of each setting into the chapters' result store (resumable:
re-run the same command after an interruption; runs go to every core), then prints the
verdict table of ``flatbook.analysis.evaluate_claims`` per setting as Markdown — the table
the README records. The same runs are read by the reproduction report (``book/exp_report.md``,
parameter ``extended``) and by any experiment chapter with ``-p setting digits-lenet``.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from flatbook import analysis as A

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["digits-lenet", "mnist1d-mlp"],
                    help="settings to run (default: digits-lenet mnist1d-mlp)")
    ap.add_argument("--results-dir", default=None,
                    help="result store (default: the book's _build/exp_results)")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (2000)")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes (default: every core)")
    a = ap.parse_args(argv)
    for name in a.settings:
        A.get_setting(name)          # unknown names fail before any training
    rows: dict[str, dict[str, str]] = {}
    info = []
    for name in a.settings:
        t0 = time.perf_counter()
        configs = A.study_configs(name)
        s = A.get_setting(name)
        results = A.obtain(configs, s, a.results_dir, workers=a.workers)
        st = A.Study(s, configs, results, s.loss_threshold)
        dt = time.perf_counter() - t0
        fin = len(st.finished)
        info.append(f"- `{name}` ({s.description}): {st.n_runs} runs, {fin} completed, "
                    f"{len(st.interpolating)} interpolating; {dt / 60:.1f} min wall")
        for c in A.evaluate_claims(st, n_boot=a.n_boot):
            rows.setdefault(c["key"], {})[name] = c["verdict"]
    print("\n".join(info))
    print()
    print("| claim | " + " | ".join(f"`{n}`" for n in a.settings) + " |")
    print("|---|" + "---|" * len(a.settings))
    for key, v in rows.items():
        print(f"| {key} | " + " | ".join(v.get(n, "–") for n in a.settings) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
