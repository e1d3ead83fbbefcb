"""A run's numerics fingerprint: what, besides its config, decides a run's numbers.
Re-exported by :mod:`flatbook.experiment`.

The fingerprint (``numerics``) holds the device, the resolved thread count, the dtype and the
torch version of the process that computed the run (and the training engine when it is not
the solo loop). They change the numbers (float32 reductions differ with the thread count) but
not the run id (so a store computed on a GPU can be rendered elsewhere): resuming under another
fingerprint is refused, loading under another one is flagged or refused
(:func:`flatbook.run_results.load_results`), and one study never mixes fingerprints
(:func:`flatbook.run_results.check_numerics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from flatbook import runspec
from flatbook import train as _train
from flatbook.run_config import RunConfig

NUMERICS = ("device", "threads", "dtype", "torch")
"""Fields of a run's numerics fingerprint (see :func:`numerics_fingerprint`)."""

SMALL_MODEL = 2_000_000
"""Below this many parameters a CPU run uses one thread when ``threads`` is None: tiny
matrix products gain nothing from intra-op threads and lose a lot on a shared machine."""

ENGINES = ("solo", "ensemble")
"""Training engines: the solo loop (:func:`flatbook.train.train`) and the batched ensemble
(:mod:`flatbook.ensemble`). They agree to rounding, not bit for bit, so the engine is part of
the numerics fingerprint (absent = ``"solo"``, as every run before the ensemble engine)."""


def _device_name(device: torch.device) -> str:
    """``"cpu"``, or ``"cuda:<GPU model>"`` (``"cuda"`` when the driver cannot name it)."""
    if device.type == "cuda":
        try:
            return f"cuda:{torch.cuda.get_device_name(device)}"
        except (RuntimeError, AssertionError):  # pragma: no cover - no driver
            return "cuda"
    return device.type


def _resolve_device(device: str) -> torch.device:
    """The torch device of a config's ``device`` (``"auto"``: CUDA when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def resolve_threads(config: RunConfig, device: torch.device, n_params: int,
                    note: bool = False) -> int:
    """Intra-op threads a run of ``config`` uses: ``config.threads`` capped at the cores
    available (:func:`flatbook.runspec.cap_threads`; with ``note``, a warning says so); else 1
    for a CPU model below ``SMALL_MODEL`` parameters; else torch's current default."""
    if config.threads is not None:
        return runspec.cap_threads(int(config.threads), note)
    if device.type == "cpu" and n_params < SMALL_MODEL:
        return 1
    return int(torch.get_num_threads())


def numerics_fingerprint(device: torch.device, threads: int, dtype: str,
                         engine: str = "solo") -> dict[str, Any]:  # fmt: skip
    """``{"device", "threads", "dtype", "torch"}`` (+ ``"engine"`` when not ``"solo"``):
    what, besides the config, decides the numbers of a run (``device`` names the GPU model
    on CUDA)."""
    _train.check_choice(engine, "engine", ENGINES)
    fp = {"device": _device_name(device), "threads": int(threads), "dtype": str(dtype),
          "torch": str(torch.__version__)}  # fmt: skip
    if engine != "solo":
        fp["engine"] = engine
    return fp


def expected_numerics(config: RunConfig, n_params: int) -> dict[str, Any]:
    """The fingerprint a run of ``config`` would get in this process (``device="cuda"``
    without CUDA: ``"cuda (not available)"``)."""
    if config.device == "cuda" and not torch.cuda.is_available():
        dev_name, dev = "cuda (not available)", torch.device("cpu")
    else:
        dev = _resolve_device(config.device)
        dev_name = _device_name(dev)
    fp = numerics_fingerprint(dev, resolve_threads(config, dev, n_params), config.dtype)
    fp["device"] = dev_name
    return fp


def numerics_diff(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, *,
                  engine: bool = True) -> list[str]:  # fmt: skip
    """Fields in which two fingerprints differ, as ``"threads: 1 ≠ 2"`` (empty: the same;
    a fingerprint that is missing compares equal — nothing to compare). ``engine``: also
    compare the training engine (a fingerprint without one is ``"solo"``)."""
    if not a or not b:
        return []
    out = [f"{k}: {a.get(k)} ≠ {b.get(k)}" for k in NUMERICS if a.get(k) != b.get(k)]
    ea, eb = a.get("engine", "solo"), b.get("engine", "solo")
    if engine and ea != eb:
        out.append(f"engine: {ea} ≠ {eb}")
    return out


__all__ = ["ENGINES", "NUMERICS", "SMALL_MODEL", "expected_numerics", "numerics_diff",
           "numerics_fingerprint", "resolve_threads"]  # fmt: skip
