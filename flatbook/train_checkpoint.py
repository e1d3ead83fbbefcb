"""A training run's resumable state: the checkpoint it writes, the checks before resuming, signals.

The state of :func:`flatbook.train.train` at a step boundary — parameters, optimizer buffers,
records, ``target_step`` and the global torch RNG state — is one dict (:func:`checkpoint_state`)
written atomically with a digest by :func:`flatbook._io.save_checkpoint`. A run resumes from it
only if its ``meta`` (the run's identity, e.g. a config hash) matches
(:func:`load_matching`, else :class:`CheckpointMismatchError`). :class:`DeferredStop` turns
Ctrl-C / SIGTERM into a flag the loop reads at the next step boundary, where the state is exact.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flatbook import _io

CHECKPOINT_FORMAT = 1


def meta_differences(stored: Any, meta: Mapping[str, Any]) -> list[str]:
    """Keys on which a checkpoint's stored meta and the requested one disagree (a key the
    stored meta lacks — written by an older version — is not a difference)."""
    if not isinstance(stored, Mapping):
        return sorted(meta) or ["meta"]
    keys = set(stored) | set(meta)
    return sorted(k for k in keys if k in stored and stored.get(k) != meta.get(k))


class CheckpointMismatchError(ValueError):
    """The checkpoint at ``checkpoint_path`` belongs to another run (its meta differs in
    ``differ``; ``stored`` is its meta)."""

    def __init__(self, message: str, differ: list[str], stored: Any) -> None:
        super().__init__(message)
        self.differ, self.stored = differ, stored


def checkpoint_state(
    meta: Mapping[str, Any],
    step: int,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    records: list[dict[str, Any]],
    target_step: int | None,
) -> dict[str, Any]:
    """The resumable state after ``step`` optimizer steps: format, meta, step, the model's and
    the optimizer's state dicts, the records so far, ``target_step`` and the global torch RNG
    state (dropout draws continue where they stopped)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "meta": meta,
        "step": step,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "records": records,
        "target_step": target_step,
        "torch_rng": torch.random.get_rng_state(),
    }


def load_matching(
    path: Path | None, meta: Mapping[str, Any], device: torch.device
) -> dict[str, Any] | None:
    """The verified checkpoint at ``path`` (tensors on ``device``), or None when there is none
    (or ``path`` is None); :class:`CheckpointMismatchError` when it was written for another run
    (another format, or its meta differs from ``meta``: :func:`meta_differences`)."""
    state = None if path is None else _io.load_checkpoint(path, device)
    if state is None:
        return None
    stored = state.get("meta")
    differ = meta_differences(stored, meta)
    if state.get("format") != CHECKPOINT_FORMAT or differ:
        raise CheckpointMismatchError(
            f"checkpoint {path} was written for a different run (differs in {differ}: "
            f"stored {stored} ≠ {meta}); delete it or use another path",
            differ, stored,
        )  # fmt: skip
    return state


class DeferredStop:
    """While active (main thread only), SIGINT/SIGTERM set a flag instead of raising; the loop
    stops cleanly at the next step boundary. A second SIGINT raises immediately."""

    def __init__(self, enabled: bool) -> None:
        self.requested: str | None = None
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> DeferredStop:
        if self.enabled:
            for s in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[s] = signal.signal(s, self._handler)
                except (ValueError, OSError):  # pragma: no cover - unusual platforms
                    pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointMismatchError",
    "DeferredStop",
    "checkpoint_state",
    "load_matching",
    "meta_differences",
]
