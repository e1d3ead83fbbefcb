"""Equality cases of the derivation chain: small networks on which each bound is tight.

A check ``lhs ≤ rhs`` on a trained network can only fail where the bound is nearly tight, and
there the slack is far above 1: a right-hand side 2 % too small or 1.5× too large passes
unnoticed. Each constructor below builds a network (at an exact interpolating minimum, targets
= its own outputs, float64) on which the listed inequalities hold with **equality**; the
chapters and tests assert ``|slack − 1|`` at rounding level there, so that an error in a
constant, a measure or a step of a proof changes a slack that must be exactly 1.

Every case returns a :class:`TightCase`; its docstring says which statements are tight and
why (which step of which proof becomes an equality). The constructions are ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flatbook._validate import check_int, check_positive_float

__all__ = [
    "TightCase",
    "equal_spectrum_jacobians",
    "equal_units",
    "isotropic_linear",
    "orthogonal_deep_linear",
    "rank_one_jacobians",
    "scalar_output",
    "sharp_mls_case",
    "tied_tokens",
]

DT = torch.float64


@dataclass(frozen=True)
class TightCase:
    """A network at an interpolating minimum on which some bounds are equalities.

    Attributes:
        model: bias-free (unless stated) ``nn.Sequential`` in float64.
        X: inputs [n, d]; Y: targets = model(X) [n, k] (exact interpolation, L = 0).
        lr: the SGD step η at which the stability-based forms are tight (``None`` if none).
        batch_size: the batch B that goes with ``lr`` (``None`` if none).
        tight: names of the statements that hold with equality (``flatbook.bounds`` /
            ``flatbook.chain`` names, e.g. ``"t1_weighted"``, ``"corollary_lvr"``).
    """

    model: nn.Sequential
    X: Tensor
    Y: Tensor
    lr: float | None
    batch_size: int | None
    tight: tuple[str, ...]


def _orthonormal_rows(rows: int, cols: int, g: torch.Generator) -> Tensor:
    """A [rows, cols] matrix with orthonormal rows (rows ≤ cols): all singular values 1."""
    Q, _ = torch.linalg.qr(torch.randn(cols, rows, generator=g, dtype=DT))
    return Q.T.contiguous()


def _sphere(n: int, d: int, radius: float, g: torch.Generator) -> Tensor:
    """n random points of norm exactly ``radius`` in R^d, [n, d]."""
    X = torch.randn(n, d, generator=g, dtype=DT)
    return radius * X / X.norm(dim=1, keepdim=True)


def _linear(W: Tensor) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0], bias=False).to(DT)
    with torch.no_grad():
        lin.weight.copy_(W)
    return lin


def _case(model: nn.Sequential, X: Tensor, lr: float | None, batch: int | None,
          tight: tuple[str, ...]) -> TightCase:
    with torch.no_grad():
        Y = model(X)
    return TightCase(model=model, X=X, Y=Y, lr=lr, batch_size=batch, tight=tight)


def isotropic_linear(k: int = 3, d: int = 5, n: int = 6, weight_scale: float = 1.7,
                     radius: float = 1.3, seed: int = 0) -> TightCase:
    """f(x) = W x with W = s U (U ∈ R^{k×d} orthonormal rows, k ≤ d), no bias, ‖x_i‖ = ρ.

    Why equality holds (G = ∂f/∂z = I_k, J_x = W, J_i = I_k ⊗ x_iᵀ):

    - L2 / T1 per sample: ‖G W‖_F = ‖W‖_F = s√k = ‖G‖_F ‖W‖₂ (all singular values of W are s);
    - L3: W is the only parameter; L4 / AM–GM: all σ_j(J_x) = s, so LVR^{2/r} = ‖J_x‖_F²/r;
    - T1 min, T2 and T3 GM forms: all ‖x_i‖ equal, so min = GM = AM of ‖x_i‖²;
    - T4 NVR, T5 volume form: r = k, r LVR^{2/r} = ‖J‖_F²;
    - T7 (SGD ceiling) at B = 1 (p = 1) and η = η* = 2/ρ²: H_i = I_k ⊗ x_i x_iᵀ has k equal
      eigenvalues ρ² and tr H_i is the same for all i, so both steps
      ‖H_i‖_F² ≥ (tr H_i)²/k and (1/n) Σ (tr H_i)² ≥ (tr H)² are equalities, and the dropped
      term (1 − p)‖H‖_F² is 0: tr H = kρ² = 2k/(pη);
    - the capstone volume form (T7 + T2): every step above at once.

    With k = 1 the MLS forms are tight too (MLS = ‖J_x‖_F for a single row): T2 v1 min form
    (r = 1), T3, T4 NMLS, T5 MLS form, the capstone MLS form and its sharper form (whose
    constant 1 + √k is 2 = 2k at k = 1). For k > 1 the sharper form is tight on
    :func:`sharp_mls_case` instead.

    Returns a :class:`TightCase` with ``lr = 2/ρ²`` and ``batch_size = 1``.
    """
    k, d, n = check_int(k, "k", 1), check_int(d, "d", 1), check_int(n, "n", 2)
    if k > d:
        raise ValueError(f"k must be ≤ d (orthonormal rows); got k = {k}, d = {d}")
    s = check_positive_float(weight_scale, "weight_scale")
    rho = check_positive_float(radius, "radius")
    g = torch.Generator().manual_seed(int(seed))
    model = nn.Sequential(_linear(s * _orthonormal_rows(k, d, g)))
    tight = ("lem2_l1", "lem3", "t1_per_sample", "t1_weighted", "t1_min", "t2_per_sample",
             "t2_gm", "t4_nvr", "t5_lvr_l1", "t7_sgd", "corollary_lvr")
    if k == 1:
        tight += ("t2_min", "t3_weighted", "t3_min", "t3_gm", "t4_nmls", "t5_mls_l1",
                  "corollary_mls", "corollary_mls_sharp", "corollary_mls_qm")
    return _case(model, _sphere(n, d, rho, g), 2.0 / rho**2, 1, tight)


def sharp_mls_case(k: int = 3, d: int = 5, n: int = 4, lr: float = 0.5, scale: float = 1.0,
                   seed: int = 0) -> TightCase:
    """f(x) = A W_1 x with W_1 = I_d (the trainable first layer) and A ∈ R^{k×d} fixed (not
    trainable), no bias, unit-norm inputs; A has squared singular values (1 + √k)/η and 1/η
    (k − 1 times), each times ``scale``.

    Why equality holds in the capstone's sharper MLS form (book ``eq-capstone-sharp``) at
    ``scale = 1``, B = 1 (p = 1):

    - per sample J_x = A W_1 = A, so MLS² = σ_1(A)²; the parameter Jacobian is J_i = A ⊗ x_iᵀ
      (W_1 is the only trainable weight), so σ_1(J_i) = ‖A‖₂‖x_i‖ and ‖x_i‖² MLS² =
      ‖W_1‖₂² λ_max(H_i) (``eq-capstone-top``) with ‖W_1‖₂ = 1;
    - H_i = AᵀA ⊗ x_i x_iᵀ has eigenvalues (1 + √k)/η and 1/η (k − 1 times) for every i, so
      the Cauchy–Schwarz step over the k − 1 lower eigenvalues is an equality, the quadratic
      in u_i sits at its minimum u_i = √(k − 1)/η, and mean(a) = √mean(a²);
    - (H2′) holds with equality: (1/n) Σ ‖H_i‖_F² = 2(k + √k)/η² = (2/η) tr H, so
      η*(1) = η.

    Hence both versions (quadratic mean, geometric mean) have slack exactly 1; a constant
    2√k or 2k in place of 1 + √k would give slack 2√k/(1 + √k) or 2k/(1 + √k). With
    ``scale > 1`` (H2′) fails, and so does the bound.

    Returns a :class:`TightCase` with ``lr`` = η and ``batch_size = 1``.
    """
    k, d, n = check_int(k, "k", 1), check_int(d, "d", 1), check_int(n, "n", 2)
    if k > d:
        raise ValueError(f"k must be ≤ d (A has k singular values); got k = {k}, d = {d}")
    lr, scale = check_positive_float(lr, "lr"), check_positive_float(scale, "scale")
    g = torch.Generator().manual_seed(int(seed))
    U, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=DT))
    s2 = torch.tensor([1 + math.sqrt(k)] + [1.0] * (k - 1), dtype=DT) * scale / lr
    A = U @ torch.diag(s2.sqrt()) @ _orthonormal_rows(k, d, g)
    model = nn.Sequential(_linear(torch.eye(d, dtype=DT)), _linear(A))
    model[1].weight.requires_grad_(False)
    tight = ("corollary_mls_sharp", "corollary_mls_qm") if scale == 1.0 else ()
    return _case(model, _sphere(n, d, 1.0, g), lr, 1, tight)


def orthogonal_deep_linear(depth: int = 3, d: int = 4, n: int = 5,
                           scales: tuple[float, ...] = (0.7, 1.6, 1.2, 0.9),
                           radius: float = 1.1, seed: int = 0) -> TightCase:
    """A deep linear net with one output: f(x) = w_Lᵀ W_{L−1} ⋯ W_1 x, W_l = s_l Q_l (Q_l
    orthogonal d×d), w_L ∈ R^d arbitrary, no bias, ‖x_i‖ = ρ.

    Why equality holds at **every** layer: G_l = ∂f/∂z_l is a single row and W_l = s_l Q_l has
    all singular values s_l, so ‖G_l W_l‖ = s_l ‖G_l‖ = ‖W_l‖₂ ‖G_l‖_F (L2 at layer l); there
    are no biases, so Σ_l ‖∇_{W_l} f‖_F² = ‖J_θ‖_F² (L3); k = 1, so MLS_l = ‖∂f/∂h_{l−1}‖_F
    and r_l LVR_l^{2/r_l} = ‖∂f/∂h_{l−1}‖_F² (r_l = 1). Hence NMLS = NVR = tr H (T4), the
    T5 forms equal κ_l, and the first-layer forms T1–T3 (equal input norms) are equalities,
    while the first layer carries only part of tr H (L3 with one block is *not* tight:
    ``lem3`` is tight, ``t1_weighted`` is not — it uses W_1's block alone).

    ``scales`` gives s_1, …, s_{L−1} (its first depth − 1 entries are used).
    """
    depth, d, n = check_int(depth, "depth", 2), check_int(d, "d", 1), check_int(n, "n", 1)
    if len(scales) < depth - 1:
        raise ValueError(f"scales must have ≥ depth − 1 = {depth - 1} entries; got {scales!r}")
    rho = check_positive_float(radius, "radius")
    g = torch.Generator().manual_seed(int(seed))
    layers = [_linear(check_positive_float(s, "scales") * _orthonormal_rows(d, d, g))
              for s in scales[: depth - 1]]
    layers.append(_linear(torch.randn(1, d, generator=g, dtype=DT)))
    tight = ("lem3", "t4_nmls", "t4_nvr", "t1_per_sample", "t2_per_sample",
             *(f"lem2_l{i}" for i in range(1, depth + 1)),
             *(f"t5_{form}_l{i}" for form in ("mls", "lvr") for i in range(1, depth + 1)))
    return _case(nn.Sequential(*layers), _sphere(n, d, rho, g), None, None, tight)


def scalar_output(widths: tuple[int, ...] = (4, 6, 5), n: int = 7, activation: str = "tanh",
                  seed: int = 0) -> TightCase:
    """Any network with one output (k = 1) at interpolation: here a tanh MLP with biases,
    widths ``(d, …, hidden)`` → 1.

    Why equality holds: ∂f/∂h_{l−1} is a single row, so its one singular value is its norm:
    MLS_l² = ‖∂f/∂h_{l−1}‖_F² = r_l LVR_l^{2/r_l} (r_l = 1). With the T5 identity
    κ_l = (1/n) Σ ‖h_{l−1}‖² ‖∂f/∂h_{l−1}‖_F², both T5 forms are equalities for every dense
    layer — a nonlinear tight case, checked against κ_l from its Hessian-block definition.
    """
    from flatbook import models

    if len(widths) < 1:
        raise ValueError("widths must list the input dimension and the hidden widths")
    n = check_int(n, "n", 1)
    model = models.mlp([*widths, 1], activation=activation, seed=int(seed), dtype=DT)
    g = torch.Generator().manual_seed(int(seed) + 1)
    X = torch.randn(n, widths[0], generator=g, dtype=DT)
    L = len(widths)
    tight = tuple(f"t5_{form}_l{i}" for form in ("mls", "lvr") for i in range(1, L + 1))
    return _case(model, X, None, None, tight)


def equal_units(d: int = 4, m: int = 3, n: int = 6, seed: int = 0) -> TightCase:
    """f(x) = c 1_mᵀ (1_m wᵀ) x: m hidden units with identical weight rows wᵀ, read out with
    equal weights c, no bias (two linear layers d → m → 1).

    Why equality holds in the adaptive-sharpness bound (book ``eq-adaptive-bound``) for the
    first layer: the entry (q) of (∂f/∂h) diag(h) is Σ_s G_s W_{sq} h_q, a sum of m terms
    G_s W_{sq} h_q = c w_q h_q that are all equal, so Cauchy–Schwarz (Σ_s a_s)² ≤ m Σ_s a_s²
    is an equality.
    """
    d, m, n = check_int(d, "d", 1), check_int(m, "m", 1), check_int(n, "n", 1)
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(1, d, generator=g, dtype=DT)
    c = 0.8
    model = nn.Sequential(_linear(torch.ones(m, 1, dtype=DT) @ w),
                          _linear(c * torch.ones(1, m, dtype=DT)))
    X = torch.randn(n, d, generator=g, dtype=DT)
    return _case(model, X, None, None, ("adaptive_l1",))


def tied_tokens(T: int = 3, q: int = 4, m: int = 2, k: int = 2, n: int = 5,
                weight_scale: float = 1.4, seed: int = 0) -> TightCase:
    """A token-wise linear map with T identical tokens: x = (u, …, u) ∈ R^{Tq} (patch size q),
    z_t = W u (W = s U, U ∈ R^{m×q} orthonormal rows, m ≤ q), f = Σ_t A z_t (the read-out
    [A, …, A] ∈ R^{k×Tm}), no bias.

    Why equality holds in both shared-weight bounds (book ``eq-shared-untied``): every
    position has the same G_t = A and h_t = u, so the T terms G_tᵀ h_tᵀ of ∇_W f are equal and
    ‖Σ_t a_t‖² = T Σ_t ‖a_t‖² (tied = T · U); and W Wᵀ = s² I, so ‖G_t W‖_F = s ‖G_t‖_F =
    ‖W‖₂ ‖G_t‖_F (position-wise form). The shared layer is item 1 of the model.
    """
    T, q, m = check_int(T, "T", 1), check_int(q, "q", 1), check_int(m, "m", 1)
    k, n = check_int(k, "k", 1), check_int(n, "n", 1)
    if m > q:
        raise ValueError(f"m must be ≤ q (orthonormal rows); got m = {m}, q = {q}")
    s = check_positive_float(weight_scale, "weight_scale")
    g = torch.Generator().manual_seed(int(seed))
    A = torch.randn(k, m, generator=g, dtype=DT)
    model = nn.Sequential(nn.Unflatten(1, (T, q)), _linear(s * _orthonormal_rows(m, q, g)),
                          nn.Flatten(), _linear(A.repeat(1, T)))
    U = torch.randn(n, q, generator=g, dtype=DT)
    return _case(model, U.repeat(1, T), None, None,
                 ("shared_position_wise", "shared_tied"))


def equal_spectrum_jacobians(N: int = 10, d: int = 64, scales: tuple[float, ...] = (0.1, 1.0, 7.0),
                             seed: int = 0) -> Tensor:
    """Jacobians J = c U (U ∈ R^{N×d} orthonormal rows, N ≤ d), one per scale c, [len, N, d].

    Why equality holds in L4 (AM–GM on singular values) and in ‖J‖_F² ≤ LD · MLS²: all
    r = N singular values equal c, so LVR^{2/r} = c² = ‖J‖_F²/r and LD = r.
    """
    N, d = check_int(N, "N", 1), check_int(d, "d", 1)
    if N > d:
        raise ValueError(f"N must be ≤ d; got N = {N}, d = {d}")
    U = _orthonormal_rows(N, d, torch.Generator().manual_seed(int(seed)))
    return torch.stack([check_positive_float(c, "scales") * U for c in scales])


def rank_one_jacobians(N: int = 4, d: int = 6, scales: tuple[float, ...] = (0.5, 2.0),
                       seed: int = 0) -> Tensor:
    """Jacobians J = c u vᵀ (unit u ∈ R^N, v ∈ R^d), one per scale c, [len, N, d].

    Why equality holds in MLS² ≤ ‖J‖_F² and in LD ≥ 1 (book ``lem-ld-link``): a rank-one
    matrix has one non-zero singular value c, so MLS² = ‖J‖_F² = c² and LD = c⁴/c⁴ = 1.
    """
    N, d = check_int(N, "N", 1), check_int(d, "d", 1)
    g = torch.Generator().manual_seed(int(seed))
    u, v = torch.randn(N, generator=g, dtype=DT), torch.randn(d, generator=g, dtype=DT)
    J = torch.outer(u / u.norm(), v / v.norm())
    return torch.stack([check_positive_float(c, "scales") * J for c in scales])
