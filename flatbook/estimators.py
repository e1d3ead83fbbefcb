"""Trace estimators on any symmetric operator or plain tensor (curvlinops' shape).

An :class:`Operator` is anything with ``P`` (the dimension), ``n_hvp`` (products so far),
``dtype``, ``device`` and ``op(V)`` = A V for V [P] or a block of rows [b, P] (→ [b, P]):
the loss Hessian :class:`flatbook.curvature.HVPOperator`, or a [P, P] tensor wrapped by
:func:`as_operator` — so every estimator is testable against ``A.trace()``.

- :func:`hutchinson_trace`: (1/m) Σ_j z_jᵀ A z_j, z_j Rademacher; stderr = std/√m.
- :func:`hutchpp_trace`: Hutch++ (Meyer, Musco, Musco & Woodruff 2021): Q = orth(A S) from
  ⌊m/3⌋ sketch columns, tr(QᵀAQ) exactly plus Hutchinson on (I − QQᵀ)A(I − QQᵀ); unbiased,
  stderr from the residual probes; exactly m products.

Probes are drawn, applied and reduced ``block`` at a time (memory O(block·P)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from flatbook._validate import check_int, check_positive_int

__all__ = ["MatrixOperator", "Operator", "PROBE_BLOCK_ENTRIES", "TraceResult", "as_operator",
           "hutchinson_trace", "hutchpp_trace"]


class Operator(Protocol):
    """A symmetric linear operator on R^P (see the module docstring)."""

    P: int
    n_hvp: int

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the products."""
        ...

    @property
    def device(self) -> torch.device:
        """device of the products."""
        ...

    def __call__(self, v: Tensor) -> Tensor:
        """A v for v [P]; A V row-wise for V [b, P]."""
        ...


class MatrixOperator:
    """A [P, P] tensor A as an :class:`Operator` (counts its products in ``n_hvp``)."""

    def __init__(self, A: Tensor) -> None:
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square [P, P] tensor; got shape {tuple(A.shape)}")
        self.A, self.P, self.n_hvp = A, A.shape[0], 0

    @property
    def dtype(self) -> torch.dtype:
        """The tensor's dtype."""
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        """The tensor's device."""
        return self.A.device

    def __call__(self, v: Tensor) -> Tensor:
        """A v for v [P], or rows A v_j for V [b, P] (b products)."""
        v = v.to(self.A.dtype)
        self.n_hvp += 1 if v.ndim == 1 else v.shape[0]
        return self.A @ v if v.ndim == 1 else v @ self.A.T


def as_operator(A: object) -> Operator:
    """``A`` itself when it is an operator (has ``P`` and is callable), a
    :class:`MatrixOperator` for a square tensor; ``TypeError`` otherwise."""
    if isinstance(A, Tensor):
        return MatrixOperator(A)
    if callable(A) and hasattr(A, "P"):
        return A  # type: ignore[return-value]
    raise TypeError(f"A must be a square torch.Tensor or an operator with .P and __call__ (e.g. "
                    f"flatbook.curvature.hvp_operator(...)); got {type(A).__name__}")


@dataclass(frozen=True)
class TraceResult:
    """An estimate of tr H (or, for ``method="gn"``, of tr G, the Gauss–Newton trace).

    Attributes:
        value: the estimate (float).
        stderr: its standard error (0.0 for the exact ``"gn"`` value). For Hutchinson it is
            sample std / √m of the m probe values; for Hutch++ the same for the residual
            Hutchinson part (the low-rank part is exact given its sketch).
        n_hvp: Hessian-vector products used (0 for ``"gn"``, which uses per-sample Jacobians).
        method: ``"gn"``, ``"hutchpp"`` or ``"hutchinson"``.
        samples: the per-probe values of the stochastic part (empty for ``"gn"``).
    """

    value: float
    stderr: float
    n_hvp: int
    method: str
    samples: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.float64))


def _rademacher(m: int, P: int, gen: torch.Generator) -> Tensor:
    return (torch.randint(0, 2, (m, P), generator=gen, dtype=torch.int8).to(torch.float64)
            * 2 - 1)


#: largest probe block (entries of one [block, P] float64 array) that the trace estimators form by
#: default: 2^22 entries = 32 MiB, so Hutchinson(100) at P ≈ 2e6 never holds a P × 100 array.
PROBE_BLOCK_ENTRIES = 1 << 22


def _probe_block(block: int | None, P: int) -> int:
    """Probes per block: ``block`` if given, else ⌊2^22 / P⌋ clipped to [1, 16]."""
    if block is None:
        return max(1, min(16, PROBE_BLOCK_ENTRIES // max(1, P)))
    return int(check_positive_int(block, "block (probes per batched product; None: "  # type: ignore[arg-type]
                                  "automatic)"))


def _hutchinson_blocks(op: Operator, m: int, block: int, gen: torch.Generator,
                       project: Tensor | None = None) -> Tensor:
    """z_jᵀ H z_j for m Rademacher probes (projected by I − QQᵀ if ``project`` = Q [P, s]),
    generated and applied ``block`` at a time: memory O(block · P), never [m, P]. Returns [m].
    """
    vals: list[Tensor] = []
    P = op.P
    for start in range(0, m, block):
        b = min(block, m - start)
        Z = _rademacher(b, P, gen).to(op.device)
        if project is not None:
            Z = Z - (Z @ project) @ project.T
        HZ = op(Z).to(torch.float64)
        vals.append((Z * HZ).sum(1).cpu())
        del Z, HZ
    return torch.cat(vals)


def _check_matvecs(num_matvecs: int, least: int, what: str) -> int:
    """The product budget m ≥ ``least`` of the estimator ``what``
    (:func:`flatbook._validate.check_int`)."""
    return check_int(num_matvecs, f"num_matvecs (for {what})", least)


def hutchinson_trace(A: object, num_matvecs: int, seed: int = 0, block: int | None = None
                     ) -> TraceResult:
    """Hutchinson's estimate (1/m) Σ_j z_jᵀ A z_j of tr A, m = ``num_matvecs`` ≥ 2 Rademacher
    probes, with stderr std(z_jᵀAz_j)/√m; A an :class:`Operator` or a [P, P] tensor.

    >>> A = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
    >>> hutchinson_trace(A, 8).value  # Rademacher z: zᵀ diag(a) z = Σ a exactly
    10.0
    """
    op = as_operator(A)
    m = _check_matvecs(num_matvecs, 2, "hutchinson (a standard error needs two probes)")
    s = _hutchinson_blocks(op, m, _probe_block(block, op.P), torch.Generator().manual_seed(seed))
    return TraceResult(value=float(s.mean()), stderr=float(s.std() / math.sqrt(m)),
                       n_hvp=op.n_hvp, method="hutchinson", samples=s)


def hutchpp_trace(A: object, num_matvecs: int, seed: int = 0, block: int | None = None
                  ) -> TraceResult:
    """Hutch++ estimate of tr A with exactly ``num_matvecs`` ≥ 4 products: sketch S of
    s = min(⌊m/3⌋, P, ⌊(m − 2)/2⌋) Rademacher columns, Q = orth(A S) [P, s], value =
    tr(QᵀAQ) + Hutchinson on (I − QQᵀ)A(I − QQᵀ) with the other m − 2s probes (stderr theirs).
    Exact (stderr 0 up to rounding) when rank A ≤ s.

    >>> A = torch.diag(torch.tensor([5.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    >>> round(hutchpp_trace(A, 12).value, 10)
    6.0
    """
    op = as_operator(A)
    m = _check_matvecs(num_matvecs, 4, "hutchpp (sketch, projection and ≥ 2 residual probes)")
    P, blk, gen = op.P, _probe_block(block, op.P), torch.Generator().manual_seed(seed)
    s_cols = min(max(1, m // 3), P, (m - 2) // 2)
    HS = torch.empty(P, s_cols, dtype=torch.float64, device=op.device)
    for start in range(0, s_cols, blk):
        b = min(blk, s_cols - start)
        HS[:, start : start + b] = op(_rademacher(b, P, gen).to(op.device)).to(torch.float64).T
    Qm, _ = torch.linalg.qr(HS)  # [P, s], orthonormal columns
    del HS
    t_low = 0.0
    for start in range(0, s_cols, blk):
        Qb = Qm[:, start : start + blk].T.contiguous()
        t_low += float((Qb * op(Qb).to(torch.float64)).sum())
    r = _hutchinson_blocks(op, m - 2 * s_cols, blk, gen, project=Qm)
    return TraceResult(value=t_low + float(r.mean()),
                       stderr=float(r.std() / math.sqrt(m - 2 * s_cols)), n_hvp=op.n_hvp,
                       method="hutchpp", samples=r)
