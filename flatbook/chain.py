"""The chain as a whole: its links (the book's map) and the end-to-end corollary (capstone).

Two things live here.

:data:`LINKS` — one :class:`Link` per step of the derivation chain
sharpness → input smoothness → volume / MLS → network-wide → invariance (paper.md §2), with its
hypothesis, whose result it is, the chapter that proves it and the :mod:`flatbook.bounds`
function whose slack measures it. The roadmap figure (:func:`flatbook.plots.roadmap`), the
chain card page and the status page are drawn from it, so they cannot disagree.

:func:`corollary` — the statement a reader should leave with. At an interpolating minimum of
the squared loss that is linearly stable in mean square for SGD with step η and batch B < n
(p = (n − B)/(B(n − 1)) > 0), with a dense first layer W_1 and k ≤ d outputs,

    GM_i LVR(x_i)^{2/k} ≤ 2 ‖W_1‖₂² / (p η GM_i ‖x_i‖²)                 (T7 + T2, the k cancels)
    GM_i MLS(x_i)²      ≤ 2k ‖W_1‖₂² / (p η GM_i ‖x_i‖²)                (T7 + T3)
    GM_i MLS(x_i)²      ≤ 2√k ‖W_1‖₂² / (p η GM_i ‖x_i‖²)               (sharper; ours)

The first two are T7's ceiling tr H ≤ 2k/(pη) inserted into the geometric-mean forms of T2 and
T3. The third (ours) skips the Cauchy–Schwarz step of T7 for the trace and uses the
mean-square condition on (1/n) Σ_i ‖H_i‖_F² directly: ‖x_i‖² MLS(x_i)² ≤ ‖W_1‖₂² σ_1(J_i)² and
σ_1(J_i)⁴ ≤ ‖H_i‖_F² ≤ …, with (1/n) Σ_i ‖H_i‖_F² ≤ 4k/(pη)² at a stable point. Every
hypothesis is *measured* (:class:`Hypothesis`), never assumed, and the slack of each form is
returned as the exact product of the slacks of the steps of its proof.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from flatbook import bounds as _bounds
from flatbook import curvature, data, models, train
from flatbook._validate import check_positive_float

__all__ = ["LINKS", "REFERENCE", "Corollary", "Hypothesis", "Link", "budget", "corollary",
           "link_slacks", "reference_network"]


# ----------------------------------------------------------------------------- the map


@dataclass(frozen=True)
class Link:
    """One step of the derivation chain.

    Attributes:
        key: short name used in figures and tables (``"T7"``, ``"T1"``, …).
        label: the book's statement label (``{prf:theorem}`` / ``{prf:lemma}``).
        title: what the step does, e.g. ``"sharpness ceiling"``.
        source, target: the quantity it starts from and the one it bounds.
        hypothesis: what must hold for the step (checked in its chapter).
        whose: whose result it is (``"paper v3+"``, ``"Ma & Ying 2021"``, ``"ours"``).
        chapter: the chapter (document name in ``book/``) that proves and checks it.
        bound: key of :func:`flatbook.bounds.all_bounds` (or of :func:`link_slacks`) whose
            slack rhs/lhs measures the step on a network; ``None`` where no bound exists.
        branch_of: for a side branch (no bound), the key of the main link it qualifies.
    """

    key: str
    label: str
    title: str
    source: str
    target: str
    hypothesis: str
    whose: str
    chapter: str
    bound: str | None
    branch_of: str | None = None


LINKS: tuple[Link, ...] = (
    Link("L1", "lem-gn", "Hessian = Gauss–Newton", "H", "(1/n) Σ JᵢᵀJᵢ",
         "f(xᵢ) = yᵢ (interpolation), squared loss", "standard (Ma & Ying 2021)",
         "ch01_hessian", "l1_gap"),
    Link("T7", "thm-sgd-stability", "stability ceiling", "η, B", "tr H ≤ 2k/(pη)",
         "linearly stable minimum (mean square), B < n", "Ma & Ying 2021; Wu, Ma & E 2018",
         "ch02_stability", "t7_sgd"),
    Link("T1", "thm-t1-smoothness", "input smoothness", "tr H", "‖x‖²‖Jₓ‖_F²",
         "dense first layer W₁", "Ma & Ying 2021 (min form); weighted form ours",
         "ch03_input_smoothness", "t1_weighted"),
    Link("T2", "thm-t2-volume", "volume", "‖Jₓ‖_F²", "LVR^(2/r)",
         "dense first layer; AM–GM over r = min(k, d) directions", "paper (v1 min, v3+ GM)",
         "ch04_volume", "t2_gm"),
    Link("T3", "thm-t3-mls", "max. sensitivity", "‖Jₓ‖_F²", "MLS²",
         "dense first layer", "paper v3+", "ch05_mls_network", "t3_gm"),
    Link("T4", "thm-t4-network", "every dense layer", "tr H", "NMLS, NVR",
         "dense layers (disjoint weight blocks)", "paper v5 (normalisation ours)",
         "ch05_mls_network", "t4_nmls"),
    Link("T6", "thm-t6-ld", "no bound on LD", "tr H", "LD (none)",
         "— (a construction: any tr H with any LD)", "paper (claim); construction ours",
         "ch06_local_dim", None, "T2"),
    Link("T5", "thm-t5-kappa", "invariant sharpness", "κ_l", "‖h‖² MLSₗ²",
         "interpolation; dense layer l", "paper v4+ (κ: Petzka et al.); identity ours",
         "ch07_invariance", "t5_mls_l1"),
    Link("S", "lem-shared", "shared weights", "U (untied)", "Σₜ‖hₜ‖²‖GₜW‖_F²",
         "none beyond the untied sum; tied form not implied", "ours",
         "ch08_shared_weights", None, "T4"),
)


#: The book's reference network (capstone and chain card): a tanh MLP 64 → 32 → 32 → 10 trained
#: with plain SGD on the digits, squared loss, one-hot targets.
REFERENCE: dict[str, object] = {"n_train": 256, "lr": 0.2, "batch_size": 4, "steps": 4000,
                                "seed": 0, "widths": (64, 32, 32, 10), "activation": "tanh"}


def reference_network(n_train: int = 256, lr: float = 0.2, batch_size: int = 4,
                      steps: int = 4000, seed: int = 0,
                      widths: tuple[int, ...] = (64, 32, 32, 10), activation: str = "tanh",
                      ) -> tuple[nn.Sequential, Tensor, Tensor, train.TrainResult]:
    """Train the reference network (defaults: :data:`REFERENCE`) and return it in float64.

    SGD (:func:`flatbook.train.train`, float32) with step ``lr`` and batch ``batch_size`` for
    ``steps`` steps on the first ``n_train`` digits (:func:`flatbook.data.load`, ``seed``).
    Returns ``(model, X, Y, result)``: the model converted to float64, the training inputs
    X [n, 64] and one-hot targets Y [n, 10] in float64, and the training result (status,
    final losses). About 6 s on one CPU core at the defaults.
    """
    ds = data.load("digits", n_train=n_train, seed=seed, flatten=True, dtype="float64")
    net = models.mlp(list(widths), activation=activation, seed=seed, dtype=torch.float32)
    res = train.train(net, ds.X_train.float(), ds.Y_train.float(), batch_size=batch_size, lr=lr,
                      steps=steps, measure=None, measure_every=steps, seed=seed, progress=False)
    return net.double(), ds.X_train, ds.Y_train, res


def link_slacks(model: nn.Sequential, X: Tensor, Y: Tensor, lr: float, batch_size: int,
                q: _bounds.Quantities | None = None) -> dict[str, float]:
    """Measured slack rhs/lhs of every :data:`LINKS` entry with a ``bound``, on one network.

    ``X, Y`` [n, …], [n, k] are the training set (n also enters p of T7). ``"l1_gap"`` is not
    a ratio of sides: it is 1 + |tr H − tr G| / tr G with tr H from the dense-free Hutch++
    estimate (:func:`flatbook.curvature.trace`, 90 HVPs, seed 0) and tr G the Gauss–Newton
    trace, i.e. how far the network is from the interpolation L1 needs (1 = exact).
    """
    q = _bounds.quantities(model, X) if q is None else q
    allb = _bounds.all_bounds(q, lr=lr, batch_size=batch_size)
    tr = curvature.trace(model, "squared", X, Y, method="hutchpp", n_hvp=90, seed=0)
    out = {"l1_gap": 1.0 + abs(tr.value - float(q.trace)) / float(q.trace)}
    for link in LINKS:
        if link.bound is not None and link.bound in allb:
            out[link.bound] = float(allb[link.bound].slack)
    return out


# ----------------------------------------------------------------------------- the corollary


@dataclass(frozen=True)
class Hypothesis:
    """A hypothesis of the corollary, measured: ``value`` compared with ``limit``."""

    name: str
    statement: str
    value: float
    limit: float
    ok: bool

    def __str__(self) -> str:
        mark = "holds" if self.ok else "FAILS"
        return f"{self.name}: {self.statement} — {self.value:.4g} vs {self.limit:.4g} ({mark})"


@dataclass(frozen=True)
class Corollary:
    """Both sides of the end-to-end corollary and the slack of every step of its proof.

    Attributes:
        n, k, d, batch_size, lr, p: the setting (p = (n − B)/(B(n − 1))).
        trace: tr G = (1/n) Σ ‖J_i‖_F² (= tr H at interpolation).
        ceiling: 2k/(pη), T7's ceiling on the trace.
        eta_star: largest mean-square stable step η*(B) at this point
            (:func:`flatbook.bounds.mean_square_lr`).
        hess_sq: (1/n) Σ_i ‖H_i‖_F², H_i = J_iᵀJ_i (used by the sharper MLS form).
        trace_jacrev: tr G again, from the Gram matrix of full per-sample Jacobians
            (``vmap(jacrev)``), independently of ``trace`` (ghost norms for dense layers).
        trace_hessian, trace_hessian_se: Hutch++ estimate of tr H (full Hessian) ± its
            standard error.
        residual: ‖f(X) − Y‖_F / ‖Y‖_F.
        lvr, mls, mls_sharp: :class:`flatbook.bounds.Bound` of the three forms
            (module docstring); ``mls_qm`` the quadratic-mean form behind ``mls_sharp``:
            sqrt((1/n) Σ_i (‖x_i‖² MLS(x_i)²)²) ≤ 2√k ‖W_1‖₂² / (pη).
        steps_lvr, steps_mls: ``{step name: slack factor ≥ 1}``, in the order of the proof,
            from the ceiling 2k/(pη) down to the measured quantity; their product is the
            slack of ``lvr`` / ``mls`` exactly.
        hypotheses: ``{name: Hypothesis}``; the corollary is proven only where all hold.
    """

    n: int
    k: int
    d: int
    batch_size: int
    lr: float
    p: float
    trace: float
    ceiling: float
    eta_star: float
    hess_sq: float
    trace_jacrev: float
    trace_hessian: float
    trace_hessian_se: float
    residual: float
    lvr: _bounds.Bound
    mls: _bounds.Bound
    mls_sharp: _bounds.Bound
    mls_qm: _bounds.Bound
    steps_lvr: dict[str, float]
    steps_mls: dict[str, float]
    hypotheses: dict[str, Hypothesis] = field(default_factory=dict)

    @property
    def hypotheses_hold(self) -> bool:
        """True iff every measured hypothesis holds."""
        return all(h.ok for h in self.hypotheses.values())


def _gm(x: Tensor) -> float:
    return float(torch.exp(torch.log(x.double()).mean()))


def _ratio(a: float, b: float) -> float:
    """a / b with a / 0 = +inf for a > 0 (a collapsed LVR: infinite slack, bound trivial)."""
    return a / b if b != 0 else (math.inf if a > 0 else math.nan)


def corollary(model: nn.Sequential, X: Tensor, Y: Tensor, lr: float, batch_size: int, *,
              z: float = 3.0, n_hvp: int = 90, seed: int = 0,
              q: _bounds.Quantities | None = None, chunk: int = 256) -> Corollary:
    """The end-to-end corollary (T7 + T2, T7 + T3, and the sharper MLS form) on one network.

    Args:
        model: an ``nn.Sequential`` whose first layer is dense on the flattened input.
        X, Y: the *training set* [n, …], [n, k] of the SGD run (n enters p; Y the targets,
            for the interpolation hypothesis).
        lr, batch_size: the SGD step η and batch B whose stability is claimed.
        z, n_hvp, seed: the interpolation hypothesis — what the proof uses of it is
            tr H = tr G (L1) — is measured as |t̂r H − tr G| ≤ z · se, with t̂r H ± se a
            Hutch++ estimate of the full Hessian's trace (``n_hvp`` products, ``seed``;
            :func:`flatbook.curvature.trace`). The tolerance is the estimator's own standard
            error, so the check tightens as ``n_hvp`` grows.
        q: precomputed :func:`flatbook.bounds.quantities` of (model, X).

    Hypotheses measured (:class:`Hypothesis`): ``interpolation`` (tr H = tr G within z
    standard errors; the relative residual ‖f(X) − Y‖_F / ‖Y‖_F is in ``residual``),
    ``stable`` (η ≤ η*(B)), ``batch`` (B < n, so p > 0), ``dense_first`` (a dense first layer
    exists), ``k_le_d`` (k ≤ d, so r = k in T2). The bounds are returned whatever the
    hypotheses say — a caller can watch them fail where a hypothesis fails.
    """
    lr = check_positive_float(lr, "lr")
    n = X.shape[0]
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an int in [1, n = {n}]; got {batch_size!r}")
    p = _bounds.sgd_p(n, batch_size)  # validates 1 ≤ B ≤ n
    if p == 0:
        raise ValueError(f"batch_size = n = {n} is full-batch GD: T7's SGD ceiling needs "
                         "B < n (use bounds.t7_gd for gradient descent)")
    q = _bounds.quantities(model, X, chunk=chunk) if q is None else q
    if q.first is None:
        raise ValueError("the corollary needs a dense first layer on the (flattened) input; "
                         "this network starts with another layer (see bounds.t4_nmls)")
    k, d = q.k, q.d
    with torch.no_grad(), curvature.eval_mode(model):
        resid = float((model(X) - Y).norm() / Y.norm())
    tr_h = curvature.trace(model, "squared", X, Y, method="hutchpp", n_hvp=n_hvp, seed=seed)
    trH, _, sum_hi = _bounds._ntk_terms(model, X, chunk)
    hess_sq = float(sum_hi) / n
    eta_star = _bounds.mean_square_lr(model, X, batch_size, chunk)

    lm, gw = q.layers[q.first], q.grad_w_sqnorm[q.first].double()
    w2 = float(lm.weight_norm) ** 2
    x2, j2 = q.x_sqnorm.double(), q.output.frob_sq.double()
    lvr_pow, mls2 = q.output.lvr_pow.double(), q.output.mls.double() ** 2
    trace = float(q.trace)
    ceiling = 2.0 * k / (p * lr)
    gm_x2 = _gm(x2)
    r = q.output.r

    lvr = _bounds.Bound("corollary_lvr", _gm(lvr_pow), 2.0 * w2 / (p * lr * gm_x2),
                        "GM LVR^{2/k} ≤ 2‖W₁‖₂² / (pη GM‖x‖²)", "ours (T7 + T2 of the paper)")
    mls = _bounds.Bound("corollary_mls", _gm(mls2), 2.0 * k * w2 / (p * lr * gm_x2),
                        "GM MLS² ≤ 2k‖W₁‖₂² / (pη GM‖x‖²)", "ours (T7 + T3 of the paper)")
    mls_sharp = _bounds.Bound("corollary_mls_sharp", _gm(mls2),
                              2.0 * math.sqrt(k) * w2 / (p * lr * gm_x2),
                              "GM MLS² ≤ 2√k‖W₁‖₂² / (pη GM‖x‖²)", "ours")
    mls_qm = _bounds.Bound("corollary_mls_qm", float((x2 * mls2).pow(2).mean().sqrt()),
                           2.0 * math.sqrt(k) * w2 / (p * lr),
                           "sqrt(mean (‖x‖² MLS²)²) ≤ 2√k‖W₁‖₂² / (pη)", "ours")
    common = {
        "T7 (stability)": ceiling / trace,
        "L3 (other parameters)": trace / float(gw.mean()),
        "GM ≤ AM (samples)": float(gw.mean()) / _gm(gw),
        "L2 (alignment)": _gm(w2 * gw / (x2 * j2)),
    }
    steps_lvr = {**common, "AM–GM (anisotropy)": _ratio(_gm(j2 / r), _gm(lvr_pow))}
    steps_mls = {**common, "MLS ≤ Frobenius": _ratio(_gm(j2), _gm(mls2))}
    hyp = {
        "interpolation": Hypothesis(
            "interpolation", "|t̂r H − tr G| ≤ z·se (L1 holds within the estimate's error)",
            abs(tr_h.value - trace), z * tr_h.stderr,
            abs(tr_h.value - trace) <= z * tr_h.stderr),
        "stable": Hypothesis("stable", "η ≤ η*(B) (mean-square linear stability)",
                             lr, eta_star, lr <= eta_star),
        "batch": Hypothesis("batch", "B < n (p > 0)", float(batch_size), float(n),
                            batch_size < n),
        "dense_first": Hypothesis("dense_first", "first layer dense on the input",
                                  1.0, 1.0, True),
        "k_le_d": Hypothesis("k_le_d", "k ≤ d (r = k)", float(k), float(d), k <= d),
    }
    return Corollary(n=n, k=k, d=d, batch_size=batch_size, lr=lr, p=p, trace=trace,
                     ceiling=ceiling, eta_star=eta_star, hess_sq=hess_sq,
                     trace_jacrev=float(trH), trace_hessian=tr_h.value,
                     trace_hessian_se=tr_h.stderr, residual=resid, lvr=lvr, mls=mls,
                     mls_sharp=mls_sharp, mls_qm=mls_qm, steps_lvr=steps_lvr,
                     steps_mls=steps_mls, hypotheses=hyp)


def budget(steps: Mapping[str, float]) -> float:
    """Total slack of a chain of steps: the product of their factors."""
    return math.prod(steps.values())
