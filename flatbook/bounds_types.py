"""The result types of the derivation chain's checks: :class:`Bound` (both sides of an
inequality lhs ≤ rhs, its slack rhs/lhs) and :class:`Identity` (both sides of an identity,
its error). Every statement of :mod:`flatbook.bounds` returns one of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Bound", "Identity", "Number"]

Number = float | Tensor


def _as_value(x: Number) -> Number:
    """A side of a statement as stored: a float for a number or a 0-d tensor, else the
    detached tensor."""
    if isinstance(x, Tensor):
        x = x.detach()
        return float(x) if x.ndim == 0 else x
    return float(x)


@dataclass(frozen=True)
class Bound:
    """Both sides of an inequality lhs ≤ rhs.

    Attributes:
        name: short key, e.g. ``"t1_weighted"``.
        lhs, rhs: floats for aggregated statements, tensors [n] for per-sample ones.
        statement: the inequality in words/symbols.
        source: whose statement it is (``"paper …"`` or ``"ours"``).
    """

    name: str
    lhs: Number
    rhs: Number
    statement: str = ""
    source: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lhs", _as_value(self.lhs))
        object.__setattr__(self, "rhs", _as_value(self.rhs))

    @property
    def applicable(self) -> bool:
        """False for an empty bound (e.g. T4 of a network without dense layers): then lhs is
        NaN, ``note`` says why, :meth:`holds` is False and a report prints "n/a"."""
        if self.note:
            return False
        lhs = torch.as_tensor(self.lhs, dtype=torch.float64)
        return not bool(torch.isnan(lhs).all())

    @property
    def slack(self) -> Number:
        """rhs / lhs (≥ 1 when the bound holds; +inf when lhs = 0 < rhs)."""
        if isinstance(self.lhs, Tensor) or isinstance(self.rhs, Tensor):
            lhs = torch.as_tensor(self.lhs, dtype=torch.float64)
            rhs = torch.as_tensor(self.rhs, dtype=torch.float64)
            return rhs / lhs
        if self.lhs == 0:
            return math.inf if self.rhs > 0 else math.nan
        return self.rhs / self.lhs

    def holds(self, rtol: float = 1e-9) -> bool:
        """lhs ≤ rhs·(1 + rtol) (for every sample of a per-sample bound).

        NaN on either side counts as a failure; a bound that is not :attr:`applicable`
        never holds.
        """
        if self.note:
            return False
        if isinstance(self.lhs, Tensor) or isinstance(self.rhs, Tensor):
            lhs = torch.as_tensor(self.lhs, dtype=torch.float64)
            rhs = torch.as_tensor(self.rhs, dtype=torch.float64)
            return bool((lhs <= rhs * (1 + rtol)).all())
        return bool(self.lhs <= self.rhs * (1 + rtol))

    def worst(self) -> tuple[float, float, float]:
        """(lhs, rhs, slack) at the tightest sample (per-sample bounds) or the values."""
        if isinstance(self.slack, Tensor):
            i = int(torch.nan_to_num(self.slack, nan=-math.inf).argmin())
            return float(self.lhs[i]), float(self.rhs[i]), float(self.slack[i])  # type: ignore[index]
        return float(self.lhs), float(self.rhs), float(self.slack)  # type: ignore[arg-type]

    def __str__(self) -> str:
        lhs, rhs, s = self.worst()
        return f"{self.name}: {lhs:.4g} ≤ {rhs:.4g} (slack {s:.3g})"


@dataclass(frozen=True)
class Identity:
    """Both sides of an identity lhs = rhs (scalars or tensors of equal shape).

    ``rel_err`` = max |lhs − rhs| / max |rhs| (normwise, robust to zero entries).
    """

    name: str
    lhs: Number
    rhs: Number
    statement: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lhs", _as_value(self.lhs))
        object.__setattr__(self, "rhs", _as_value(self.rhs))

    @property
    def abs_err(self) -> float:
        """max |lhs − rhs|."""
        d = torch.as_tensor(self.lhs, dtype=torch.float64) - torch.as_tensor(
            self.rhs, dtype=torch.float64
        )
        return float(d.abs().max())

    @property
    def rel_err(self) -> float:
        """max |lhs − rhs| / max |rhs| (0 when both are exactly 0)."""
        scale = float(torch.as_tensor(self.rhs, dtype=torch.float64).abs().max())
        err = self.abs_err
        if scale == 0:
            return 0.0 if err == 0 else math.inf
        return err / scale

    def holds(self, tol: float = 1e-8) -> bool:
        """rel_err ≤ tol."""
        return self.rel_err <= tol

    def __str__(self) -> str:
        return f"{self.name}: relative error {self.rel_err:.2e}"

