"""Option records of :func:`flatbook.curvature.sharpness` and :func:`flatbook.curvature.trace`.

Both functions also take these options as keywords (``sharpness(model, loss, X, Y, tol=1e-4)``,
:func:`flatbook.keyword_form.resolve`); an unknown keyword is a ``TypeError`` naming it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SharpnessOptions", "TraceOptions"]


@dataclass(frozen=True)
class SharpnessOptions:
    """How :func:`flatbook.curvature.sharpness` computes the top-k eigenvalues of H.

    Attributes:
        k: number of top eigenvalues, 1 ≤ k ≤ P (k < P for ``solver="eigsh"``).
        tol: relative residual tolerance in (0, 1) (``ValueError`` otherwise): every Ritz pair
            satisfies ‖Hv − λv‖ ≤ tol·|λ|; the result carries the bound it certifies
            (:attr:`flatbook.curvature.SharpnessResult.error_bound`).
        seed: seeds the start vector (same seed → bit-identical result).
        solver: ``"lanczos"`` (own thick-restart Lanczos with full reorthogonalisation, default)
            or ``"eigsh"`` (ARPACK via ``scipy.sparse.linalg.eigsh``, which='LA').
        chunk: samples per pass (memory bound); ``None``: all at once.
        ncv: Krylov basis size before a restart (memory ncv·P floats). Default for
            ``"lanczos"``: min(P, max(2k + 1, min(64, 2^27 / P))); for ``"eigsh"``: scipy's
            min(P, max(2k + 1, 20)).
        max_hvp: cap on Hessian-vector products (then ``converged=False`` and a warning).
        verify: after convergence, search the deflated complement for eigenvalues that a
            single-vector Krylov space misses (exactly repeated eigenvalues, e.g. the
            Kronecker-structured Hessian of a linear layer). Default: on iff k > 1 (λ_max
            itself is never missed). Costs one more Lanczos run.
        check: run the determinism probe and finiteness checks.
        backend: HVP backend, ``"revrev"`` or ``"fwdrev"`` (see
            :func:`flatbook.curvature.hvp_operator`).
    """

    k: int = 1
    tol: float = 1e-6
    seed: int = 0
    solver: str = "lanczos"
    chunk: int | None = 1024
    ncv: int | None = None
    max_hvp: int = 2000
    verify: bool | None = None
    check: bool = True
    backend: str = "revrev"


@dataclass(frozen=True)
class TraceOptions:
    """How :func:`flatbook.curvature.trace` estimates tr H.

    Attributes:
        method: ``"gn"`` (exact Gauss–Newton trace), ``"hutchpp"`` or ``"hutchinson"``.
        n_hvp: product budget of the stochastic methods (ignored by ``"gn"``); ≥ 2 for
            Hutchinson, ≥ 4 for Hutch++.
        seed: seeds the probes (same seed → bit-identical result).
        chunk: samples per pass (HVPs) / per Jacobian block (``"gn"``; ``None``: automatic).
        block: probes per batched product and the memory bound of the stochastic methods:
            probes are drawn, applied and reduced ``block`` at a time, so no array larger than
            [block, P] of probes is formed (Hutch++ also keeps its sketch basis Q [P, m/3],
            which the method needs). ``None``: ⌊2^22 / P⌋ clipped to [1, 16] (≤ 32 MiB per
            float64 block).
        check: run the determinism probe and finiteness checks.
        backend: HVP backend, ``"revrev"`` or ``"fwdrev"`` (see
            :func:`flatbook.curvature.hvp_operator`).
    """

    method: str = "gn"
    n_hvp: int = 100
    seed: int = 0
    chunk: int | None = 1024
    block: int | None = None
    check: bool = True
    backend: str = "revrev"
