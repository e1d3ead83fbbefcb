"""The phases of a training run: the interpolation phase (training loss ~0, 100% accuracy) and
the plateau of a quantity."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike


def interpolation_start(loss: ArrayLike, threshold: float) -> int | None:
    """Index where the *interpolation phase* starts: the first measurement from which the
    training loss stays ≤ ``threshold`` until the end (None if the last one is above it).

    Args:
        loss: training loss at each measurement, shape [T].
        threshold: loss level counted as "zero" (e.g. 1e-3 for the squared loss).
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0; got {threshold}")
    la = np.asarray(loss, dtype=float).ravel()
    below = np.isfinite(la) & (la <= threshold)
    if la.size == 0 or not below[-1]:
        return None
    above = np.flatnonzero(~below)
    return int(above[-1] + 1) if above.size else 0


def late_phase(traj: Mapping[str, ArrayLike], start: int | None) -> dict[str, np.ndarray]:
    """The trajectory restricted to measurements ``start, start+1, …`` (empty if None)."""
    out = {}
    for k, v in traj.items():
        a = np.asarray(v)
        out[k] = a[start:] if start is not None else a[:0]
    return out



def plateau_start(v: ArrayLike, rel_tol: float = 0.1) -> int | None:
    """First index i from which v stays within ``rel_tol`` (relative) of its final value:
    the *plateau* of a quantity such as λ_max. None if v has no finite value at the end."""
    if not rel_tol > 0:
        raise ValueError(f"rel_tol must be > 0; got {rel_tol}")
    va = np.asarray(v, dtype=float).ravel()
    if va.size == 0 or not np.isfinite(va[-1]):
        return None
    inside = np.isfinite(va) & (np.abs(va - va[-1]) <= rel_tol * abs(va[-1]))
    outside = np.flatnonzero(~inside)
    return int(outside[-1] + 1) if outside.size else 0


def phase_start(traj: Mapping[str, np.ndarray], loss_threshold: float) -> int | None:
    """Index of the first measurement of the interpolation phase: from there on the training
    loss stays ≤ ``loss_threshold`` and the training accuracy is 100% (see
    :func:`interpolation_start`)."""
    loss = np.asarray(traj["train_loss"], dtype=float).copy()
    if "train_acc" in traj:
        loss[np.asarray(traj["train_acc"]) < 1.0] = math.inf
    return interpolation_start(loss, loss_threshold)


class RunView:
    """The run selections every study offers (mixed into :class:`flatbook.analysis.Study`
    and :class:`flatbook.analysis.calibration.RunSet`): needs ``summaries`` (dicts with
    ``status``, ``interpolates``, ``phase_index``) and ``trajectories``."""

    summaries: list
    trajectories: list

    @property
    def finished(self) -> list[int]:
        """Indices of runs that completed (did not diverge)."""
        return [i for i, s in enumerate(self.summaries) if s["status"] == "completed"]

    @property
    def interpolating(self) -> list[int]:
        """Indices of completed runs that end in the interpolation phase."""
        return [i for i in self.finished if self.summaries[i]["interpolates"]]

    def late_trajectories(self) -> list[dict[str, np.ndarray]]:
        """The interpolation-phase part of each interpolating run's trajectory."""
        return [late_phase(self.trajectories[i], self.summaries[i]["phase_index"])
                for i in self.interpolating]
