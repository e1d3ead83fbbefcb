"""flatbook: loss flatness implies compressed representations, measured.

Companion package of the flatbook Jupyter Book (Chen, Recanatesi & Shea-Brown,
arXiv 2310.01770). One concept per module:

- :mod:`flatbook.losses`     — squared loss (the bounds' loss) and cross-entropy
- :mod:`flatbook.curvature`  — Hessian-vector products, λ_max (Lanczos), tr H (exact GN, Hutch++)
- :mod:`flatbook.probe`      — any ``nn.Module`` and its data (tensors, DataLoader), resolved once
- :mod:`flatbook.layers`     — naming layer boundaries of an ``nn.Sequential``, dense layers
- :mod:`flatbook.geometry`   — input Jacobians, log LVR, MLS, LD, participation ratio
- :mod:`flatbook.bounds`     — both sides of every inequality of the derivation chain
- :mod:`flatbook.report`     — ``flatbook.report(model, X, Y)``: every measure and bound at once
- :mod:`flatbook.models`     — MLP, LeNet-5, VGG, small ViT (all ``nn.Sequential``)
- :mod:`flatbook.data`       — digits (offline default), MNIST / Fashion-MNIST / CIFAR-10 readers
- :mod:`flatbook.train`      — SGD / GD training with a measurement schedule
- :mod:`flatbook.experiment` — run configs, sweeps, the result store, the CLI
- :mod:`flatbook.executors`  — sweeps as submitit jobs (local processes or Slurm)
- :mod:`flatbook.analysis`   — the experiment chapters' sweeps, correlations and verdicts
- :mod:`flatbook.plots`, :mod:`flatbook.plots_experiments` — the book's figures
- :mod:`flatbook.traceability` — lemma/theorem label → code → tests map of the book
"""

from __future__ import annotations

__version__ = "0.1.0"

# Direct (not lazy) import: binds the function ``flatbook.report`` over the submodule attribute
# once, so that a later ``import flatbook.report`` cannot replace it.
from flatbook.report import Report, report  # noqa: E402

__all__ = ["Report", "__version__", "report"]
