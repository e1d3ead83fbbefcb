"""The extended study: a second architecture at CPU scale, run on request.

``python scripts/extended_study.py [--results-dir DIR] [--settings digits-lenet mnist1d-mlp]
[--replicates K]`` computes every missing run of each setting into the chapters' result
store through the ensemble engines (LeNet-5 by :mod:`flatbook.ensemble_func`, the MLP by
:mod:`flatbook.ensemble`; resumable: re-run the same command after an interruption; runs go
to every core), then prints, per setting, its wall time and the machine's load, and the
verdict table of ``flatbook.analysis.evaluate_claims`` as Markdown — the table the README
records. ``--replicates K`` computes only the first K replicates of every cell (a part of the
study with the same run ids: the rest is computed by a later full call), to time a part and
extrapolate. The same runs are read by the reproduction report (``book/exp_report.md``,
parameter ``extended``) and by any experiment chapter with ``-p setting digits-lenet``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["digits-lenet", "mnist1d-mlp"],
                    help="settings to run (default: digits-lenet mnist1d-mlp)")
    ap.add_argument("--results-dir", default=None,
                    help="result store (default: the book's _build/exp_results)")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (2000)")
    ap.add_argument("--workers", type=int, default=None,
                    help="worker processes (default: every core)")
    ap.add_argument("--replicates", type=int, default=None,
                    help="only the first K replicates of every cell (default: all)")
    return ap


def _load() -> str:
    """The machine's 1-, 5- and 15-minute load averages, as ``uptime`` prints them."""
    try:
        return ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not POSIX
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Compute the missing runs of each setting, then print one line per setting (runs,
    completed, interpolating, wall time, load before and after) and the verdict table."""
    from flatbook import analysis as A

    a = _parser().parse_args(argv)
    for name in a.settings:
        A.get_setting(name)          # unknown names fail before any training
    rows: dict[str, dict[str, str]] = {}
    info = []
    for name in a.settings:
        s = A.get_setting(name)
        seeds = None if a.replicates is None else s.seeds[:a.replicates]
        configs = A.study_configs(name, seeds=seeds)
        load0, t0 = _load(), time.perf_counter()
        results = A.obtain(configs, s, a.results_dir, workers=a.workers)
        dt = time.perf_counter() - t0
        st = A.Study(s, configs, results, s.loss_threshold)
        info.append(f"- `{name}` ({s.description}): {st.n_runs} runs, {len(st.finished)} "
                    f"completed, {len(st.interpolating)} interpolating; {dt / 60:.1f} min "
                    f"wall (load {load0} before, {_load()} after)")
        print(info[-1], flush=True)
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
