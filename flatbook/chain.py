"""The chain as a whole: its links (the book's map) and the end-to-end corollary (capstone).

Two things live here.

:data:`LINKS` — one :class:`Link` per step of the derivation chain
sharpness → input smoothness → volume / MLS → network-wide → invariance (paper.md §2), with its
hypothesis, whose result it is, the chapter that proves it and the :mod:`flatbook.bounds`
function whose slack measures it. The roadmap figure (:func:`flatbook.plots.roadmap`), the
chain card page and the status page are drawn from it, so they cannot disagree.

:func:`corollary` — the statement a reader should leave with. Write H_GN = (1/n) Σ_i J_iᵀJ_i
(the Gauss–Newton matrix, = H at interpolation), H_i = J_iᵀJ_i and
p = (n − B)/(B(n − 1)) > 0 (SGD with batch B < n). Assume

    (H2′) η [(1 − p) ‖H_GN‖_F² + (p/n) Σ_i ‖H_i‖_F²] ≤ 2 tr H_GN   at θ, i.e. η ≤ η*(B),

a dense first layer W_1 and k ≤ d outputs. Then, at any θ (no interpolation needed),

    GM_i LVR(x_i)^{2/k} ≤ 2 ‖W_1‖₂² / (p η GM_i ‖x_i‖²)                 (T7 + T2, the k cancels)
    GM_i MLS(x_i)²      ≤ 2k ‖W_1‖₂² / (p η GM_i ‖x_i‖²)                (T7 + T3)
    GM_i MLS(x_i)²      ≤ (1 + √k) ‖W_1‖₂² / (p η GM_i ‖x_i‖²)          (sharper; :func:`mls_sharp`)

(H2′) is the mean-square condition of T7 written with Gauss–Newton quantities. It is
*necessary* for mean-square linear stability of SGD at an interpolating minimum (where
H_GN = H, L1), not sufficient; at interpolation (H1) a stable SGD end point therefore satisfies
it. The first two forms are T7's ceiling tr H_GN ≤ 2k/(pη) — which uses Cauchy–Schwarz over the
k eigenvalues of each H_i — inserted into the geometric-mean forms of T2 and T3. The third
keeps the top eigenvalue of each H_i apart and applies Cauchy–Schwarz only to the other k − 1:
σ_1(J_i)² ≤ (1 + √k)/(pη) in quadratic mean (at k = 1 this is the higher-moment argument of
Ma & Ying 2021). Of the hypotheses, only (H2′) is a property of the trained network that could
fail; B < n, the dense first layer and k ≤ d are read off the setting. The slack of each form
is returned as the exact product of the slacks of the steps of its proof.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from flatbook import bounds as _bounds
from flatbook import curvature, data, models, train
from flatbook._validate import check_positive_float
from flatbook.bounds_stability import ntk_terms
from flatbook.estimators import TraceResult
from flatbook.keyword_form import resolve

__all__ = ["LINKS", "REFERENCE", "Corollary", "CorollaryOptions", "Hypothesis", "Link",
           "budget", "corollary", "link_slacks", "mls_sharp", "reference_network",
           "sharp_constant"]


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
        math: the step as a matplotlib mathtext string (drawn in the roadmap figure).
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
    math: str = ""


LINKS: tuple[Link, ...] = (
    Link("L1", "lem-gn", "Hessian = Gauss–Newton", "H", "(1/n) Σ JᵢᵀJᵢ",
         "f(xᵢ) = yᵢ (interpolation), squared loss", "standard (Ma & Ying 2021)",
         "ch01_hessian", "l1_gap", math=r"$H = \frac{1}{n}\sum_i J_i^{\top} J_i$ at interpolation"),
    Link("T7", "thm-sgd-stability", "stability ceiling", "η, B", "tr H ≤ 2k/(pη)",
         "mean-square condition (necessary for stability), B < n",
         "condition: Ma & Ying 2021, Mulayoff & Michaeli 2023; k-output ceiling ours",
         "ch02_stability", "t7_sgd", math=r"$\mathrm{tr}\,H \leq 2k/(p\eta)$"),
    Link("T1", "thm-t1-smoothness", "input smoothness", "tr H", "‖x‖²‖Jₓ‖_F²",
         "dense first layer W₁", "Ma & Ying 2021 (min form); weighted form ours",
         "ch03_input_smoothness", "t1_weighted",
         math=r"$\frac{1}{n}\sum_i \Vert x_i\Vert^2\Vert J_x(x_i)\Vert_F^2 \leq "
              r"\Vert W_1\Vert_2^2\,\mathrm{tr}\,H$"),
    Link("T2", "thm-t2-volume", "volume", "‖Jₓ‖_F²", "LVR^(2/r)",
         "dense first layer; AM–GM over r = min(k, d) directions", "paper (v1 min, v3+ GM)",
         "ch04_volume", "t2_gm", math=r"$\mathrm{GM}_i\,\mathrm{LVR}(x_i)^{2/r} \leq "
              r"\Vert W_1\Vert_2^2\,\mathrm{tr}\,H\,/\,(r\,\mathrm{GM}_i\Vert x_i\Vert^2)$"),
    Link("T3", "thm-t3-mls", "max. sensitivity", "‖Jₓ‖_F²", "MLS²",
         "dense first layer", "paper v3+", "ch05_mls_network", "t3_gm",
         math=r"$\mathrm{GM}_i\,\mathrm{MLS}(x_i)^2 \leq "
              r"\Vert W_1\Vert_2^2\,\mathrm{tr}\,H\,/\,\mathrm{GM}_i\Vert x_i\Vert^2$"),
    Link("T4", "thm-t4-network", "every dense layer", "tr H", "NMLS, NVR",
         "dense layers (disjoint weight blocks)", "paper v5 (normalisation ours)",
         "ch05_mls_network", "t4_nmls",
         math=r"$\mathrm{NMLS},\ \mathrm{NVR} \leq \mathrm{tr}\,H$"),
    Link("T6", "thm-t6-ld", "no bound on LD", "tr H", "LD (none)",
         "none (a construction: any tr H with any LD)", "paper (claim); construction ours",
         "ch06_local_dim", None, "T2", math=r"$\mathrm{LD} \in [1, r]$ free"),
    Link("T5", "thm-t5-kappa", "invariant sharpness", "κ_l", "‖h‖² MLSₗ²",
         "interpolation; dense layer l", "paper v4+ (κ: Petzka et al.); identity ours",
         "ch07_invariance", "t5_mls_l1",
         math=r"$\frac{1}{n}\sum_i \Vert h_{l-1}(x_i)\Vert^2\,\mathrm{MLS}_l(x_i)^2 "
              r"\leq \kappa_l$"),
    Link("S", "lem-shared", "shared weights", "U (untied)", "Σₜ‖hₜ‖²‖GₜW‖_F²",
         "none beyond the untied sum; tied form not implied", "ours",
         "ch08_shared_weights", None, "T4",
         math=r"$\sum_t \Vert h_t\Vert^2 \Vert G_t W\Vert_F^2$"),
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
    a ratio of sides: it is 1 + |tr H − tr H_GN| / tr H_GN with tr H from the dense-free Hutch++
    estimate (:func:`flatbook.curvature.trace`, 90 HVPs, seed 0) and tr H_GN the Gauss–Newton
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
        trace: tr H_GN = (1/n) Σ ‖J_i‖_F², the Gauss–Newton trace (= tr H at interpolation).
        ceiling: 2k/(pη), T7's ceiling on the trace.
        eta_star: η*(B) = 2 tr H_GN / [(1 − p)‖H_GN‖_F² + (p/n) Σ_i ‖H_i‖_F²] at this point
            (:func:`flatbook.bounds.mean_square_lr`); η ≤ η*(B) is (H2′), a *necessary*
            condition for mean-square stability, not a sufficient one.
        hess_sq: (1/n) Σ_i ‖H_i‖_F², H_i = J_iᵀJ_i (the per-sample term of (H2′)).
        top_sq: (1/n) Σ_i λ_max(H_i)² = (1/n) Σ_i σ_1(J_i)⁴; under (H2′) its square root is
            at most (1 + √k)/(pη) (the step behind the sharper MLS form).
        trace_jacrev: tr H_GN again, from the Gram matrix of full per-sample Jacobians
            (``vmap(jacrev)``), independently of ``trace`` (ghost norms for dense layers).
        trace_hessian, trace_hessian_se: Hutch++ estimate of tr H (full Hessian) ± its
            standard error.
        residual: ‖f(X) − Y‖_F / ‖Y‖_F.
        lvr, mls, mls_sharp: :class:`flatbook.bounds.Bound` of the three forms
            (module docstring); ``mls_qm`` the quadratic-mean form behind ``mls_sharp``
            (:func:`mls_sharp`).
        steps_lvr, steps_mls: ``{step name: slack factor ≥ 1}``, in the order of the proof,
            from the ceiling 2k/(pη) down to the measured quantity; their product is the
            slack of ``lvr`` / ``mls`` exactly.
        hypotheses: ``{name: Hypothesis}`` of the corollary: ``stable`` (H2′), ``batch``,
            ``dense_first``, ``k_le_d``; the three bounds are proven wherever all hold.
        interpolation: (H1), tr H = tr H_GN within the Hutch++ error — not a hypothesis of
            the corollary; together with mean-square stability of SGD it *implies* (H2′).
            A weak test: for piecewise-linear networks (ReLU) tr H = tr H_GN at every θ.
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
    top_sq: float = math.nan
    interpolation: Hypothesis | None = None

    @property
    def hypotheses_hold(self) -> bool:
        """True iff every hypothesis of the corollary ((H2′), B < n, dense W_1, k ≤ d) holds."""
        return all(h.ok for h in self.hypotheses.values())


#: relative rounding floor of the interpolation check (two float64 traces of one matrix)
_TRACE_RTOL = 1e-9


def _gm(x: Tensor) -> float:
    return float(torch.exp(torch.log(x.double()).mean()))


def _ratio(a: float, b: float) -> float:
    """a / b with a / 0 = +inf for a > 0 (a collapsed LVR: infinite slack, bound trivial)."""
    return a / b if b != 0 else (math.inf if a > 0 else math.nan)


def sharp_constant(k: int) -> float:
    """The constant 1 + √k of the sharper MLS form (:func:`mls_sharp`); 2 at k = 1."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (the number of outputs) must be an int ≥ 1; got {k!r}")
    return 1.0 + math.sqrt(k)


def mls_sharp(q: _bounds.Quantities, lr: float, batch_size: int,
              n: int | None = None) -> tuple[_bounds.Bound, _bounds.Bound]:
    """The sharper MLS form of the corollary, quadratic-mean and geometric-mean versions:

        sqrt((1/n) Σ_i (‖x_i‖² MLS(x_i)²)²) ≤ (1 + √k) ‖W_1‖₂² / (pη),
        GM_i MLS(x_i)²                     ≤ (1 + √k) ‖W_1‖₂² / (pη GM_i ‖x_i‖²),

    valid wherever (H2′) η ≤ η*(B) holds (book, ch09). Proof: per sample
    ‖x_i‖² MLS(x_i)² ≤ ‖W_1‖₂² a_i with a_i = λ_max(H_i) = σ_1(J_i)² (L2 and "a block of
    columns has no larger spectral norm"); writing ‖H_i‖_F² = a_i² + R_i and
    tr H_i = a_i + T_i, Cauchy–Schwarz over the other k − 1 eigenvalues gives
    T_i ≤ √((k − 1) R_i), so c R_i − 2 T_i ≥ −(k − 1)/c with c = pη; (H2′) without its
    (1 − p) term then gives c·mean(a²) − 2·mean(a) ≤ (k − 1)/c and, with mean(a) ≤ √mean(a²),
    √mean(a²) ≤ (1 + √k)/c. Equality: B = 1, one spectrum for every H_i with top eigenvalue
    (1 + √k)/c and the other k − 1 equal to 1/c, and the L2 step tight.

    Args:
        q: :func:`flatbook.bounds.quantities` of the model on its training inputs (needs a
            dense first layer, ``q.first``).
        lr, batch_size: the SGD step η and batch B (1 ≤ B < n).
        n: training-set size for p (default: the rows of ``q``).

    Returns ``(qm, gm)``: :class:`flatbook.bounds.Bound` ``corollary_mls_qm`` (lhs, rhs
    scalars) and ``corollary_mls_sharp``.
    """
    lr = check_positive_float(lr, "lr")
    if q.first is None:
        raise ValueError("mls_sharp needs a dense first layer on the (flattened) input "
                         "(q.first is None)")
    n = q.n if n is None else int(n)
    p = _bounds.sgd_p(n, batch_size)
    if p == 0:
        raise ValueError(f"batch_size = n = {n}: the sharper form needs B < n (p > 0)")
    c = sharp_constant(q.k)
    w2 = float(q.layers[q.first].weight_norm) ** 2
    x2, mls2 = q.x_sqnorm.double(), q.output.mls.double() ** 2
    qm = _bounds.Bound("corollary_mls_qm", float((x2 * mls2).pow(2).mean().sqrt()),
                       c * w2 / (p * lr), "sqrt(mean (‖x‖² MLS²)²) ≤ (1+√k)‖W₁‖₂² / (pη)",
                       "ours (k = 1: Ma & Ying 2021's higher-moment argument)")
    gm = _bounds.Bound("corollary_mls_sharp", _gm(mls2), c * w2 / (p * lr * _gm(x2)),
                       "GM MLS² ≤ (1+√k)‖W₁‖₂² / (pη GM‖x‖²)",
                       "ours (k = 1: Ma & Ying 2021's higher-moment argument)")
    return qm, gm


def _top_sq(model: nn.Module, X: Tensor, chunk: int) -> float:
    """(1/n) Σ_i λ_max(J_i J_iᵀ)², from per-sample parameter Jacobians J_i [k, P]."""
    tops = []
    with torch.no_grad():
        for J in curvature.per_sample_jacobians(model, X, chunk):
            b = next(iter(J.values())).shape[0]
            Jc = torch.cat([Jn.reshape(b, Jn.shape[1], -1) for Jn in J.values()], 2)
            tops.append(torch.linalg.eigvalsh(Jc @ Jc.transpose(1, 2))[:, -1])
    return float(torch.cat(tops).double().pow(2).mean())


def _hypotheses(lr: float, eta_star: float, batch_size: int, n: int, k: int,
                d: int) -> dict[str, Hypothesis]:
    """The corollary's hypotheses: (H2′), B < n, a dense first layer, k ≤ d."""
    return {
        "stable": Hypothesis("stable", "η ≤ η*(B) (H2′: the mean-square condition, "
                             "necessary for stability)", lr, eta_star, lr <= eta_star),
        "batch": Hypothesis("batch", "B < n (p > 0)", float(batch_size), float(n),
                            batch_size < n),
        "dense_first": Hypothesis("dense_first", "first layer dense on the input",
                                  1.0, 1.0, True),
        "k_le_d": Hypothesis("k_le_d", "k ≤ d (r = k)", float(k), float(d), k <= d),
    }


@dataclass(frozen=True)
class CorollaryOptions:
    """How :func:`corollary` measures what is not a hypothesis of the corollary.

    Attributes:
        z, n_hvp, seed: the interpolation check (H1, :attr:`Corollary.interpolation`) is
            |t̂r H − tr H_GN| ≤ z · se + 1e-9 tr H_GN, with t̂r H ± se a Hutch++ estimate of the
            full Hessian's trace (``n_hvp`` products, ``seed``;
            :func:`flatbook.curvature.trace`) and a rounding floor for se = 0.
        chunk: samples per vectorised call of the per-sample Jacobians (η*(B), the Gram
            matrix, λ_max(H_i), and :func:`flatbook.bounds.quantities` when ``q`` is not given).
    """

    z: float = 3.0
    n_hvp: int = 90
    seed: int = 0
    chunk: int = 256


def _setting(X: Tensor, lr: float, batch_size: int) -> tuple[float, int, float]:
    """(η, n, p) of the corollary's setting, checked: η > 0, B an int with 1 ≤ B < n (SGD,
    p = (n − B)/(B(n − 1)) > 0)."""
    lr = check_positive_float(lr, "lr")
    n = X.shape[0]
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise TypeError(f"batch_size must be an int in [1, n = {n}]; got {batch_size!r}")
    p = _bounds.sgd_p(n, batch_size)  # validates 1 ≤ B ≤ n
    if p == 0:
        raise ValueError(f"batch_size = n = {n} is full-batch GD: T7's SGD ceiling needs "
                         "B < n (use bounds.t7_gd for gradient descent)")
    return lr, n, p


def _forms(q: _bounds.Quantities, p: float, lr: float) -> tuple[_bounds.Bound, _bounds.Bound]:
    """The volume and MLS forms of the corollary (T7 + T2, T7 + T3):
    GM LVR^{2/k} ≤ 2‖W₁‖₂² / (pη GM‖x‖²) and GM MLS² ≤ 2k‖W₁‖₂² / (pη GM‖x‖²)."""
    k = q.k
    w2 = float(q.layers[q.first].weight_norm) ** 2  # type: ignore[index]
    lvr_pow, mls2 = q.output.lvr_pow.double(), q.output.mls.double() ** 2
    gm_x2 = _gm(q.x_sqnorm.double())
    lvr = _bounds.Bound("corollary_lvr", _gm(lvr_pow), 2.0 * w2 / (p * lr * gm_x2),
                        "GM LVR^{2/k} ≤ 2‖W₁‖₂² / (pη GM‖x‖²)", "ours (T7 + T2 of the paper)")
    mls = _bounds.Bound("corollary_mls", _gm(mls2), 2.0 * k * w2 / (p * lr * gm_x2),
                        "GM MLS² ≤ 2k‖W₁‖₂² / (pη GM‖x‖²)", "ours (T7 + T3 of the paper)")
    return lvr, mls


def _steps(q: _bounds.Quantities, ceiling: float) -> tuple[dict[str, float], dict[str, float]]:
    """The slack factor of every step of the proofs of the volume and MLS forms, from T7's
    ceiling 2k/(pη) down to the measured quantity (their products are the forms' slacks)."""
    gw = q.grad_w_sqnorm[q.first].double()  # type: ignore[index]
    w2 = float(q.layers[q.first].weight_norm) ** 2  # type: ignore[index]
    x2, j2 = q.x_sqnorm.double(), q.output.frob_sq.double()
    lvr_pow, mls2 = q.output.lvr_pow.double(), q.output.mls.double() ** 2
    trace = float(q.trace)
    common = {
        "T7 (stability)": ceiling / trace,
        "L3 (other parameters)": trace / float(gw.mean()),
        "GM ≤ AM (samples)": float(gw.mean()) / _gm(gw),
        "L2 (alignment)": _gm(w2 * gw / (x2 * j2)),
    }
    steps_lvr = {**common, "AM–GM (anisotropy)": _ratio(_gm(j2 / q.output.r), _gm(lvr_pow))}
    steps_mls = {**common, "MLS ≤ Frobenius": _ratio(_gm(j2), _gm(mls2))}
    return steps_lvr, steps_mls


def _interpolation(tr_h: TraceResult, trace: float, z: float) -> Hypothesis:
    """(H1) reported apart: |t̂r H − tr H_GN| ≤ z·se + 1e-9 tr H_GN (Hutch++ t̂r H ± se)."""
    gap = abs(tr_h.value - trace)
    # a rounding floor: where Hutch++ is exact (se = 0, e.g. a linear network whose Hessian
    # its sketch captures) the two traces still differ by float rounding
    tol = z * tr_h.stderr + _TRACE_RTOL * abs(trace)
    return Hypothesis("interpolation", "|t̂r H − tr H_GN| ≤ z·se (H1: H = H_GN, L1)",
                      gap, tol, gap <= tol)


def corollary(model: nn.Sequential, X: Tensor, Y: Tensor, lr: float, batch_size: int, *,
              q: _bounds.Quantities | None = None, options: CorollaryOptions | None = None,
              **flags: Any) -> Corollary:
    """The end-to-end corollary (T7 + T2, T7 + T3, and the sharper MLS form) on one network.

    Args:
        model: an ``nn.Sequential`` whose first layer is dense on the flattened input.
        X, Y: the *training set* [n, …], [n, k] of the SGD run (n enters p; Y the targets,
            for the interpolation check).
        lr, batch_size: the SGD step η and batch B of (H2′).
        q: precomputed :func:`flatbook.bounds.quantities` of (model, X).
        options: :class:`CorollaryOptions` (``z``, ``n_hvp``, ``seed`` of the interpolation
            check, ``chunk``), or the same fields as keywords
            (``corollary(model, X, Y, lr, B, n_hvp=12)``; they replace those of ``options``);
            an unknown keyword is a ``TypeError`` naming it.

    Hypotheses measured (:class:`Hypothesis`): ``stable`` (H2′: η ≤ η*(B), computed from
    Gauss–Newton quantities, meaningful at any θ), ``batch`` (B < n, so p > 0),
    ``dense_first``, ``k_le_d`` (k ≤ d, so r = k in T2). The bounds are returned whatever the
    hypotheses say — a caller can watch them fail where (H2′) fails. The interpolation check
    (H1, not a hypothesis of the corollary) is reported as :attr:`Corollary.interpolation`.
    """
    o = resolve(CorollaryOptions, "corollary", options, flags)
    lr, n, p = _setting(X, lr, batch_size)
    q = _bounds.quantities(model, X, chunk=o.chunk) if q is None else q
    if q.first is None:
        raise ValueError("the corollary needs a dense first layer on the (flattened) input; "
                         "this network starts with another layer (see bounds.t4_nmls)")
    with torch.no_grad(), curvature.eval_mode(model):
        resid = float((model(X) - Y).norm() / Y.norm())
    tr_h = curvature.trace(model, "squared", X, Y, method="hutchpp", n_hvp=o.n_hvp, seed=o.seed)
    trH, _, sum_hi = ntk_terms(model, X, o.chunk)
    eta_star = _bounds.mean_square_lr(model, X, batch_size, o.chunk)
    trace = float(q.trace)
    ceiling = 2.0 * q.k / (p * lr)
    lvr, mls = _forms(q, p, lr)
    mls_qm, mls_gm = mls_sharp(q, lr, batch_size, n)
    steps_lvr, steps_mls = _steps(q, ceiling)
    return Corollary(n=n, k=q.k, d=q.d, batch_size=batch_size, lr=lr, p=p, trace=trace,
                     ceiling=ceiling, eta_star=eta_star, hess_sq=float(sum_hi) / n,
                     trace_jacrev=float(trH), trace_hessian=tr_h.value,
                     trace_hessian_se=tr_h.stderr, residual=resid, lvr=lvr, mls=mls,
                     mls_sharp=mls_gm, mls_qm=mls_qm, steps_lvr=steps_lvr,
                     steps_mls=steps_mls,
                     hypotheses=_hypotheses(lr, eta_star, batch_size, n, q.k, q.d),
                     top_sq=_top_sq(model, X, o.chunk),
                     interpolation=_interpolation(tr_h, trace, o.z))


def budget(steps: Mapping[str, float]) -> float:
    """Total slack of a chain of steps: the product of their factors."""
    return math.prod(steps.values())
