"""Run configurations: :class:`RunConfig`, its identity (config hash, run id) and grids of
configs. Re-exported by :mod:`flatbook.experiment`.

Run identity: ``config_hash`` = SHA-256 of the canonical JSON of the *semantic* fields of the
config (everything that changes the numbers); operational fields (``OPERATIONAL``: device,
threads, checkpoint frequency, progress bar, data folder) are excluded. ``run_id`` =
readable prefix + the first 10 hex digits of the hash; a run is stored in
``results_dir/<run_id>/`` (:func:`run_dir_for`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flatbook import _validate, runspec
from flatbook._io import stable_hash

DEFAULT_STEPS = runspec.DEFAULT_STEPS
DEFAULT_RESULTS_DIR = "results"
DEVICES = runspec.DEVICES
OPERATIONAL = runspec.OPERATIONAL
"""Config fields that do not change the numbers: excluded from the config hash / run id."""


@runspec.spec_class(runspec.PARAMS)
class RunConfig:
    """Everything that defines one training run (defaults: the book's digits MLP run).

    The fields, their defaults, meaning and validation are declared once, in
    :data:`flatbook.runspec.PARAMS` (listed below); a default that depends on another field
    adapts to it (``eval_size`` and ``batch_size`` at most ``n_train``, ``measure_every`` at
    most ``steps``, ``steps`` = ``DEFAULT_STEPS`` unless ``epochs``). Operational fields
    (``OPERATIONAL``: device, threads, checkpoint frequency, progress bar, data folder) do not
    enter the config hash. A bad value raises a one-line ValueError / TypeError naming the
    field (its ``param`` attribute)."""

    # -- identity -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain JSON-able values."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}  # fmt: skip

    def semantic_dict(self) -> dict[str, Any]:
        """The fields that determine the numbers (``to_dict`` minus ``OPERATIONAL``;
        ``label_noise`` only when it is not 0, so plain-SGD run ids predate the field)."""
        d = {k: v for k, v in self.to_dict().items() if k not in OPERATIONAL}
        if d.get("label_noise") == 0.0:
            del d["label_noise"]
        return d

    @property
    def config_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`semantic_dict`."""
        return stable_hash(self.semantic_dict())

    @property
    def run_id(self) -> str:
        """Folder name: ``{model}-{dataset}-lr{lr}-b{batch}[-ln{σ}]-s{seed}-{hash[:10]}``."""
        ln = f"-ln{self.label_noise:g}" if self.label_noise else ""
        return (
            f"{self.model}-{self.dataset}-lr{self.lr:g}-b{self.batch_size}{ln}-s{self.seed}-"
            f"{self.config_hash[:10]}"
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """Build from a dict (e.g. ``config.json``); unknown keys are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown RunConfig field(s) {unknown}; allowed: {names}")
        return cls(**d)

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again); a default that was derived
        from other fields is derived again, and ``steps`` / ``epochs`` unset each other."""
        return RunConfig(**runspec.replaced(self, runspec.PARAMS, changes))


MODEL_OPTION_KINDS = _validate.MODEL_OPTION_KINDS
"""Kind of each model option of ``flatbook.models.MODEL_OPTIONS`` (checked in RunConfig)."""


def run_dir_for(config: RunConfig, results_dir: str | Path = DEFAULT_RESULTS_DIR) -> Path:
    """``results_dir / config.run_id``."""
    return Path(results_dir) / config.run_id


def grid(base: RunConfig | None = None, **axes: Sequence[Any]) -> list[RunConfig]:
    """Cartesian product of field values over ``base``: ``grid(lr=[0.05, 0.1],
    batch_size=[8, 32], seed=[0, 1], model=["mlp"])`` → 8 configs (last axis fastest)."""
    base = base or RunConfig()
    names = [f.name for f in dataclasses.fields(RunConfig)]
    for k, v in axes.items():
        if k not in names:
            raise ValueError(f"unknown grid axis {k!r}; allowed: RunConfig fields {names}")
        if isinstance(v, str) or not isinstance(v, Sequence) or len(v) == 0:
            raise ValueError(f"grid axis {k} must be a non-empty list of values; got {v!r}")
    keys = list(axes)
    return [base.replace(**dict(zip(keys, combo, strict=True)))
            for combo in itertools.product(*(axes[k] for k in keys))]  # fmt: skip


__all__ = ["DEFAULT_RESULTS_DIR", "DEFAULT_STEPS", "DEVICES", "MODEL_OPTION_KINDS",
           "OPERATIONAL", "RunConfig", "grid", "run_dir_for"]  # fmt: skip
