"""A compact fixture of real runs: only the series the plan's rules read, float32.

:func:`save_fixture` writes a study's trajectories (every measurement, so the late window can
be recomputed at any threshold) for the keys of :data:`FIXTURE_KEYS` and the per-run design
(η, B, seed, status, stability ceilings) to one ``.npz`` file; :func:`load_fixture` reads it
back as a :class:`flatbook.analysis.calibration.RunSet` that
:func:`flatbook.analysis.evaluate_claims` scores like a study. ``scripts/make_fixture.py``
extracts it from a store (R6: the calibration tests run on it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FIXTURE_KEYS", "load_fixture", "save_fixture"]

FIXTURE_KEYS = (
    "step", "train_loss", "train_acc", "trace_gn", "lambda_max", "log_lvr_median",
    "mls_median", "nmls", "nvr", "ld_median", "test_trace_hessian", "test_lambda_max",
    "test_log_lvr_median", "log_lvr_mean", "l1_weight_norm", "t1_weighted_lhs",
    "t1_weighted_slack", "frob_sq_mean", "r", "log_lvr_finite_frac",
    "t2_per_sample_slack_median", "log_frob_sq_mean")
"""Record keys the plan's rules and the mechanism read."""
DESIGN = ("lr", "batch_size", "seed", "n_train", "n_classes", "gd_ceiling", "sgd_ceiling")


def save_fixture(study: Any, path: str | Path, keys: tuple[str, ...] = FIXTURE_KEYS) -> Path:
    """Write the finished runs of ``study`` to ``path`` (.npz): per key an array [R, T]
    (float32, NaN-padded to the longest run), ``length`` [R], the design columns of
    :data:`DESIGN` (B = inf for full batch) and ``status``. Returns the path."""
    runs = [i for i, s in enumerate(study.summaries) if s["status"] in ("completed",
                                                                        "diverged")]
    if not runs:
        raise ValueError("study has no finished run to save")
    trajs = [study.trajectories[i] for i in runs]
    T = max(t["step"].size for t in trajs)
    out: dict[str, np.ndarray] = {}
    for k in keys:
        a = np.full((len(runs), T), np.nan, dtype=np.float32)
        for r, t in enumerate(trajs):
            if k in t:
                a[r, :t[k].size] = t[k]
        out[k] = a
    out["length"] = np.array([t["step"].size for t in trajs], dtype=np.int32)
    for c in DESIGN:
        out[c] = np.array([math.inf if study.summaries[i].get(c) == "full"
                           else float(study.summaries[i].get(c, math.nan)) for i in runs])
    out["status"] = np.array([study.summaries[i]["status"] for i in runs])
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(p, **out)
    return p


def load_fixture(path: str | Path) -> Any:
    """The fixture at ``path`` as a RunSet (``summaries`` with the design, ``status`` and the
    final value of every key; ``trajectories`` of float64 arrays, padding removed)."""
    from flatbook.analysis.calibration import RunSet
    from flatbook.analysis.phases import phase_start

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no fixture at {p}; make it with scripts/make_fixture.py")
    z = np.load(p, allow_pickle=False)
    keys = [k for k in FIXTURE_KEYS if k in z.files]
    summaries, trajs = [], []
    for r in range(int(z["length"].size)):
        n = int(z["length"][r])
        t = {k: z[k][r, :n].astype(float) for k in keys}
        s: dict[str, Any] = {c: float(z[c][r]) for c in DESIGN if c in z.files}
        s["batch_size"] = "full" if math.isinf(s["batch_size"]) else int(s["batch_size"])
        s["seed"] = int(s["seed"])
        s["status"] = str(z["status"][r])
        k0 = phase_start(t, 1e-2)
        s |= {k: float(t[k][-1]) for k in keys}
        s |= {"interpolates": k0 is not None, "phase_index": k0,
              "phase_step": float(t["step"][k0]) if k0 is not None else math.nan}
        summaries.append(s)
        trajs.append(t)
    return RunSet(summaries, trajs)
