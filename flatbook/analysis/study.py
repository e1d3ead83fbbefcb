"""Run summaries and the :class:`Study` of a setting's sweep."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flatbook.analysis.phases import RunView, late_phase, phase_start
from flatbook.analysis.settings import DEFAULT_SETTING, Setting, get_setting, study_configs
from flatbook.analysis.stats import (
    METHODS,
    mean_ci,
    relative_change,
    trajectory_correlations,
    trend,
)
from flatbook.analysis.store import TEST_TRACE_HVPS, obtain
from flatbook.keyword_form import resolve

# --------------------------------------------------------------------------- run summaries
SHARPNESS = ("lambda_max", "trace_gn", "kappa_sum")
"""Sharpness measures: λ_max(H), tr H (= Gauss–Newton trace at interpolation), and the
relative flatness Σ_l κ_l (T5; reparametrization-invariant)."""

REPRESENTATION = ("log_lvr_median", "mls_median", "nmls", "nvr", "ld_median", "gap_loss")
"""Representation measures (output map x ↦ f: median over the evaluation samples — robust to
the few samples whose Jacobian is rank-deficient, log LVR = −∞, or zero, LD undefined — and
the network-wide NMLS, NVR) and the generalization gap (test loss − train loss)."""


def trajectory(result: object) -> dict[str, np.ndarray]:
    """All record keys of a run as arrays [T] (NaN where missing), plus derived keys:
    ``gap_loss`` = test − train loss, ``gap_acc`` = train − test accuracy, ``kappa_sum`` =
    Σ_l κ_l over dense layers (and ``test_kappa_sum``)."""
    recs = result.records  # type: ignore[attr-defined]
    keys: dict[str, None] = {}
    for r in recs:
        keys.update(dict.fromkeys(r))
    t = {k: np.array([float(r.get(k, math.nan)) for r in recs]) for k in keys}
    nan = np.full(len(recs), math.nan)
    t["gap_loss"] = t.get("test_loss", nan) - t.get("train_loss", nan)
    t["gap_acc"] = t.get("train_acc", nan) - t.get("test_acc", nan)
    for pre in ("", "test_"):
        ks = [k for k in t if k.startswith(pre + "l") and k.endswith("_kappa")
              and k[len(pre) + 1:-6].isdigit()]
        t[pre + "kappa_sum"] = np.sum([t[k] for k in ks], axis=0) if ks else nan.copy()
    return t


def run_summary(result: object, loss_threshold: float,
                keys: Sequence[str] | None = None) -> dict[str, object]:
    """One flat dict per run: ``lr``, ``batch_size``, ``seed``, ``status``, ``diverged``,
    ``interpolates`` (the run ends in the interpolation phase), ``phase_step`` (its onset),
    the final value of every key (``keys``: all record and derived keys), and for each the
    late-phase ``trend_<key>`` (Kendall τ with the step over the interpolation phase),
    ``late_change_<key>`` (relative change over it) and ``late_mean_<key>`` (mean over it)."""
    cfg = result.config  # type: ignore[attr-defined]
    t = trajectory(result)
    start = phase_start(t, loss_threshold)
    out: dict[str, object] = {
        "lr": float(cfg.lr), "batch_size": cfg.batch_size, "seed": int(cfg.seed),
        "status": result.status, "diverged": result.status == "diverged",  # type: ignore[attr-defined]
        "interpolates": start is not None,
        "phase_step": float(t["step"][start]) if start is not None else math.nan,
        "final_step": float(t["step"][-1]) if t["step"].size else math.nan,
    }
    late = late_phase(t, start)
    for k in (keys if keys is not None else list(t)):
        v = t.get(k)
        if v is None or k in ("step", "epoch"):
            continue
        out[k] = float(v[-1]) if v.size else math.nan
        out[f"trend_{k}"] = trend(late["step"], late[k]) if late["step"].size else math.nan
        out[f"late_change_{k}"] = relative_change(late[k]) if late["step"].size else math.nan
        fin = late[k][np.isfinite(late[k])] if late["step"].size else late[k][:0]
        out[f"late_mean_{k}"] = float(fin.mean()) if fin.size else math.nan
    return out


def stability_ceilings(lr: float, batch_size: int | str, n: int, k: int) -> tuple[float, float]:
    """(2/η, 2k/(pη)): the linear-stability ceilings of λ_max (GD) and of tr H (SGD with batch
    B drawn without replacement from n samples, p = (n − B)/(B(n − 1)); +inf for full batch),
    from :func:`flatbook.bounds.t7_gd` and :func:`flatbook.bounds.t7_sgd` (paper.md T7)."""
    from flatbook import bounds

    B = n if batch_size == "full" else int(batch_size)
    return (float(bounds.t7_gd(math.nan, lr).rhs),
            float(bounds.t7_sgd(math.nan, lr, B, n, k).rhs))


@dataclass
class Study(RunView):
    """A setting's sweep with its results (one :class:`flatbook.experiment.Results` per
    config, same order) and the per-run trajectories and summaries used by the chapters."""

    setting: Setting
    configs: list
    results: list
    loss_threshold: float

    def __post_init__(self) -> None:
        self.trajectories = [trajectory(r) for r in self.results]
        self.summaries = []
        for r, t in zip(self.results, self.trajectories, strict=True):
            s = run_summary(r, self.loss_threshold)
            s["n_train"], s["n_classes"] = int(r.data["n_train"]), int(r.data["n_classes"])
            s["gd_ceiling"], s["sgd_ceiling"] = stability_ceilings(
                s["lr"], s["batch_size"], s["n_train"], s["n_classes"])
            s["phase_index"] = phase_start(t, self.loss_threshold)
            self.summaries.append(s)

    @property
    def n_runs(self) -> int:
        """Number of runs (configs) of the sweep."""
        return len(self.results)

    def hidden_ld_keys(self) -> list[str]:
        """Record keys of the local dimensionality of each hidden representation x ↦ h_l."""
        keys = self.trajectories[0] if self.trajectories else {}
        return sorted((k for k in keys if k.startswith("rep_") and k.endswith("_ld_mean")),
                      key=lambda k: int(k.split("_")[1]) if k.split("_")[1].isdigit() else 0)

    def pick(self, lr: float | None = None, batch_size: int | None = None,
             seed: int | None = None) -> int:
        """Index of the run closest (in log η, log B) to the requested one among interpolating
        runs (else completed, else all); defaults: the second-largest η, the smallest B, the
        first seed — a run deep in the late phase."""
        pool = self.interpolating or self.finished or list(range(self.n_runs))
        lrs = sorted({self.summaries[i]["lr"] for i in pool})
        bs = sorted({_b(self.summaries[i]["batch_size"]) for i in pool})
        lr = lr if lr is not None else lrs[-2] if len(lrs) > 1 else lrs[0]
        batch_size = batch_size if batch_size is not None else bs[0]
        seed = seed if seed is not None else min(self.summaries[i]["seed"] for i in pool)

        def dist(i: int) -> tuple[float, int]:
            s = self.summaries[i]
            return (abs(math.log(s["lr"] / lr)) + abs(math.log(_b(s["batch_size"]) / batch_size)),
                    abs(s["seed"] - seed))

        return min(pool, key=dist)

    def describe(self) -> dict[str, str]:
        """The sweep in words, for glued prose: ``lrs``, ``batch_sizes``, ``seeds`` (sets),
        ``steps``, ``n_train``, ``eval_size``, ``test_size``, ``n_measure`` (measurements per
        run), ``model`` and ``dataset``."""
        def fmt(vals: Iterable[object]) -> str:
            return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                   for v in sorted(set(vals), key=_b)) + "}"

        r0 = self.results[0]
        c0 = r0.config
        return {
            "lrs": fmt(float(s["lr"]) for s in self.summaries),
            "batch_sizes": fmt(s["batch_size"] for s in self.summaries),
            "seeds": fmt(s["seed"] for s in self.summaries),
            "steps": f"{int(max(s['final_step'] for s in self.summaries)):,}".replace(",", " "),
            "n_train": f"{int(r0.data['n_train']):,}".replace(",", " "),
            "eval_size": str(int(self.trajectories[0].get("n", [c0.eval_size])[0])),
            "test_size": str(int(self.trajectories[0]["test_n"][0]))
            if "test_n" in self.trajectories[0] else "0",
            "n_measure": str(len(self.trajectories[0]["step"])),
            "model": str(c0.model), "dataset": str(c0.dataset),
            "arch": str(c0.model) + "".join(f", {k} = {v}" for k, v in c0.model_kw.items()),
            "test_hvps": str(TEST_TRACE_HVPS),
        }

    def trajectory_table(self, xs: Sequence[str], ys: Sequence[str],
                         methods: Sequence[str] = METHODS, n_boot: int = 2000, seed: int = 0
                         ) -> list[dict[str, object]]:
        """Correlations *along* trajectories: for each (x, y, method), the rank correlation of
        x with y over the measurements of each run's interpolation phase, averaged over runs
        (``estimate``) with a bootstrap CI over runs (``lo``, ``hi``); ``n`` = runs with a
        defined value. Same row format as :func:`correlation_table`."""
        trajs = self.late_trajectories()
        rows = []
        for x, y, m in itertools.product(xs, ys, methods):
            v = trajectory_correlations(trajs, x, y, m)
            est, lo, hi = mean_ci(v, n_boot=n_boot, seed=seed)
            n = int(np.isfinite(v).sum())
            sign = 1 if lo > 0 else -1 if hi < 0 else 0
            rows.append({"x": x, "y": y, "method": m, "estimate": est, "lo": lo, "hi": hi,
                         "n": n, "pvalue": math.nan, "level": 0.95, "n_boot": int(n_boot),
                         "sign": sign})
        return rows


def _b(batch_size: int | str) -> float:
    """A batch size as a number for sorting and distances (``"full"`` → +inf)."""
    return math.inf if batch_size == "full" else float(batch_size)


@dataclass(frozen=True)
class StudyOptions:
    """How :func:`load_study` obtains a sweep's results: the store ``results_dir`` (``None``:
    the setting's default), whether missing runs are computed (``compute_missing``; else an
    error), the training-loss ``loss_threshold`` of the interpolation phase (``None``: the
    setting's), the ``engine`` that computes missing runs (``"ensemble"``, default: compatible
    runs trained together, or ``"solo"``; :func:`flatbook.analysis.store.resolve_engine`) and
    its ``workers`` processes (:func:`flatbook.analysis.store.resolve_workers`)."""

    results_dir: str | Path | None = None
    compute_missing: bool = True
    loss_threshold: float | None = None
    engine: str | None = None
    workers: int | None = None


def load_study(
    setting: str = DEFAULT_SETTING,
    *,
    lrs: Sequence[float] | None = None,
    batch_sizes: Sequence[int] | None = None,
    seeds: Sequence[int] | None = None,
    options: StudyOptions | None = None,
    **overrides: object,
) -> Study:
    """Configs of ``setting`` (:func:`study_configs`), their results from the store or
    computed (:func:`obtain`), and the summaries (:class:`Study`). Every chapter calls this
    with the same parameters, so the sweep is computed once and then read back.

    ``lrs``, ``batch_sizes``, ``seeds`` replace the setting's axes; ``options``
    (:class:`StudyOptions`) or its fields as keywords (``results_dir=…, compute_missing=…,
    loss_threshold=…, engine=…, workers=…``) say how results are obtained; every other keyword
    overrides a ``RunConfig`` field of every run (``steps=…``; :func:`study_configs` names an
    unknown one)."""
    names = [f.name for f in dataclasses.fields(StudyOptions)]
    o = resolve(StudyOptions, "load_study", options,
                {k: overrides.pop(k) for k in names if k in overrides})
    s = get_setting(setting)
    thr = s.loss_threshold if o.loss_threshold is None else o.loss_threshold
    if not (isinstance(thr, int | float) and thr > 0):
        raise ValueError(f"loss_threshold must be a positive number; got {o.loss_threshold!r}")
    configs = study_configs(setting, lrs=lrs, batch_sizes=batch_sizes, seeds=seeds, **overrides)
    results = obtain(configs, s, o.results_dir, compute_missing=o.compute_missing,
                     workers=o.workers, engine=o.engine)
    return Study(s, configs, results, float(thr))


def consistency(rows: Sequence[Mapping[str, object]], x: str, ys: Sequence[str],
                method: str = "kendall") -> list[dict[str, object]]:
    """For each y: the ``method`` correlation with x across runs (rows with ``where ==
    "across"``) and along trajectories (``"along"``), and ``worst`` = the smaller of the two
    (NaN if either is undefined) — a measure correlates *consistently* when even its worst
    value is high (the paper's "MLS correlates most consistently", v3)."""
    out = []
    for y in ys:
        vals = {}
        for where in ("across", "along"):
            hit = [float(r["estimate"]) for r in rows if r.get("where") == where
                   and r["x"] == x and r["y"] == y and r["method"] == method]
            vals[where] = hit[0] if hit else math.nan
        worst = min(vals.values()) if all(math.isfinite(v) for v in vals.values()) else math.nan
        out.append({"y": y, "across": vals["across"], "along": vals["along"], "worst": worst})
    return out
