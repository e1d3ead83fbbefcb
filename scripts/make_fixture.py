"""Extract the compact calibration fixture (tests/data/fixture_runs.npz) from a result store.

    python scripts/make_fixture.py                      # the default setting, default store
    python scripts/make_fixture.py --setting digits-mlp --results-dir _build/exp_results \
        --out tests/data/fixture_runs.npz
    python scripts/make_fixture.py --seeds 0-8 --steps 4000 --measure-every 100 --n-train 150

Reads the runs with ``flatbook.analysis.load_study`` (never computes unless
``--compute-missing``) and keeps only the series the analysis plan's rules read
(``flatbook.analysis.fixture.FIXTURE_KEYS``), float32, every measurement. The calibration
tests (tests/test_calibration.py) require the fixture to hold ≥ 36 finished runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flatbook import analysis as A
from flatbook.analysis.fixture import load_fixture, save_fixture


def _range(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default=A.DEFAULT_SETTING)
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tests" / "data"
                                         / "fixture_runs.npz"))
    ap.add_argument("--seeds", type=_range, default=None, help="e.g. 0-8 or 0,1,2")
    ap.add_argument("--lrs", type=float, nargs="+", default=None)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--measure-every", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--compute-missing", action="store_true")
    a = ap.parse_args()
    over = {k: v for k, v in (("steps", a.steps), ("measure_every", a.measure_every),
                              ("n_train", a.n_train)) if v is not None}
    st = A.load_study(a.setting, lrs=a.lrs, batch_sizes=a.batch_sizes, seeds=a.seeds,
                      results_dir=a.results_dir, compute_missing=a.compute_missing, **over)
    p = save_fixture(st, a.out)
    back = load_fixture(p)
    print(f"{p}: {len(back.summaries)} runs, {p.stat().st_size / 1024:.0f} kB")


if __name__ == "__main__":
    main()
