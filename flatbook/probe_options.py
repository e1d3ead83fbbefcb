"""How a model is read: the option record of :class:`flatbook.probe.Probe` (and of the probe
stage of :func:`flatbook.report`, :class:`flatbook.pipeline.ReportOptions`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["ProbeOptions"]


@dataclass(frozen=True)
class ProbeOptions:
    """How the model is read (see :class:`flatbook.probe.Probe`): ``output`` selects f from a
    tuple/dict output (index, key or callable), ``layers`` restricts the dense layers,
    ``forward(model, x)`` calls the model (dict inputs), ``chunk`` samples per vectorised call."""

    output: int | str | Callable[[object], Tensor] | None = None
    layers: object = None
    forward: Callable[[nn.Module, object], object] | None = None
    chunk: int | None = None
