"""Both sides of every inequality of the derivation chain (paper.md §2: L1–L4, T1–T7).

Each bound is returned as a :class:`Bound` — ``lhs``, ``rhs``, ``slack = rhs/lhs`` and
``holds(rtol)`` (lhs ≤ rhs·(1 + rtol)) — so that a chapter can print, plot and assert it.
Identities (L1, L2, the T5 identity) are returned as :class:`Identity` with their error.

Where the trace comes from
--------------------------
The bounds are stated with tr H at an interpolating minimum of the squared loss, where
tr H = (1/n) Σ_i ‖J_i‖_F² (L1). We always use this Gauss–Newton trace ``q.trace`` =
(1/n) Σ_i ‖J_i‖_F² (computed exactly from per-sample parameter Jacobians with
:func:`flatbook.curvature.jacobian_sqnorms`). The inequalities T1–T5 hold with it **at any θ**
(their proofs use only L2 and L3, which are statements about J); they hold with tr H itself
only where tr H = tr H_GN (the Gauss–Newton trace), i.e. at interpolation (L1). Bias
parameters enter tr H but not the left sides: they only loosen the bounds.

Which statement is whose
------------------------
- T1 min form (Ma & Ying 2021 for a scalar output; the paper's extension to k outputs, v1
  "Eq. 6"), T2 v1 (sum of LVR²) and v3+ (geometric mean) forms, T3 (MLS) and T5's relative
  flatness κ_l (Petzka et al. 2021, used in paper v4+) are the paper's (in our notation; its
  printed constants are not available to us, see paper.md).
- T7: linear stability of GD and SGD is Wu, Ma & E 2018 and Ma & Ying 2021; the mean-square
  condition in trace form, :func:`t7_sgd_mean_square`, is Mulayoff & Michaeli 2023, Prop. 3
  (a *necessary* condition for mean-square stability); the trace ceiling with k outputs and
  batch factor p, :func:`t7_sgd`, is ours (its case k = B = 1, tr H ≤ 2/η, is Wu & Su 2023).
- The T1 weighted form, the per-sample forms, the T5 identity κ_l = (1/n) Σ ‖h‖²‖∂f/∂h‖_F²,
  the T6 construction and the shared-weight terms (:func:`shared_weight_terms`: convolutions,
  patch embeddings, token-wise linear maps) are ours. NMLS and NVR in T4 are defined as the
  left-hand sides below: **the normalisation by ‖W_l‖₂² is ours**.

All functions work in the dtype of the model: use float64 for checks at 1e-9.

Where the code lives
--------------------
This module is the public face: it re-exports every name of its parts, one concept each,
so that ``from flatbook import bounds; bounds.t3_gm(q)`` is the way to call them.

- ``flatbook.bounds_types`` — :class:`Bound`, :class:`Identity`;
- ``flatbook.bounds_quantities`` — :class:`Quantities`, :func:`quantities`,
  :func:`probe_quantities`;
- ``flatbook.bounds_theorems`` — L2, L3, T1–T5 from ``q`` and :func:`all_bounds`;
- ``flatbook.bounds_stability`` — T7 (:func:`sgd_p`, :func:`mean_square_lr`, …);
- ``flatbook.bounds_sequential`` — the ``nn.Sequential``-only statements
  (:func:`relative_flatness`, :func:`t5_identity`, :func:`l2_identity`,
  :func:`shared_weight_terms`);
- ``flatbook.bounds_hessian`` — :func:`l1_identity`, :func:`adaptive_sharpness`;
- ``flatbook.bounds_t6`` — :func:`t6_construction` and its :class:`T6Options`.
"""

from __future__ import annotations

from flatbook.bounds_hessian import adaptive_sharpness, l1_identity
from flatbook.bounds_quantities import Quantities, probe_quantities, quantities
from flatbook.bounds_sequential import KAPPA_METHODS as KAPPA_METHODS  # relative_flatness's
from flatbook.bounds_sequential import (
    SharedWeightTerms,
    l2_identity,
    relative_flatness,
    shared_weight_terms,
    t5_identity,
)
from flatbook.bounds_stability import (
    mean_square_lr,
    sgd_p,
    t7_gd,
    t7_sgd,
    t7_sgd_mean_square,
)
from flatbook.bounds_t6 import T6Network, T6Options, t6_construction
from flatbook.bounds_theorems import (
    all_bounds,
    kappa,
    l2_bound,
    l3_bound,
    t1_min,
    t1_per_sample,
    t1_weighted,
    t2_gm,
    t2_min,
    t2_per_sample,
    t3_gm,
    t3_min,
    t3_weighted,
    t4_nmls,
    t4_nvr,
    t5_lvr,
    t5_mls,
)
from flatbook.bounds_types import Bound, Identity
from flatbook.bounds_types import Number as Number  # the type of a side: float | Tensor

__all__ = [
    "Bound",
    "Identity",
    "Quantities",
    "SharedWeightTerms",
    "T6Network",
    "T6Options",
    "adaptive_sharpness",
    "all_bounds",
    "kappa",
    "l1_identity",
    "l2_bound",
    "l2_identity",
    "l3_bound",
    "mean_square_lr",
    "probe_quantities",
    "quantities",
    "relative_flatness",
    "sgd_p",
    "shared_weight_terms",
    "t1_min",
    "t1_per_sample",
    "t1_weighted",
    "t2_gm",
    "t2_min",
    "t2_per_sample",
    "t3_gm",
    "t3_min",
    "t3_weighted",
    "t4_nmls",
    "t4_nvr",
    "t5_identity",
    "t5_lvr",
    "t5_mls",
    "t6_construction",
    "t7_gd",
    "t7_sgd",
    "t7_sgd_mean_square",
]
