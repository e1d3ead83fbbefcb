"""Experiments: run configurations, a result store on disk, resumable runs and sweeps.

Result store layout (one folder per run; ``results_dir`` defaults to ``results/``)::

    results/
      <run_id>/                 e.g. mlp-digits-lr0.2-b32-s0-3f9c0a1b2d
        config.json             the RunConfig (all fields), its hash, the run id
        checkpoint.pt           resumable state (parameters, optimizer, records, RNG); kept
                                at the end as the trained model
        results.json            status, records, final values, provenance (written last)

Every file is written atomically (temporary file + ``os.replace``). ``results.json`` exists only
once a run has finished (``status`` ``"completed"`` or ``"diverged"``) or failed
(``"failed"``, with the error); an interrupted run leaves ``config.json`` and
``checkpoint.pt`` (and ``checkpoint.prev.pt``, the one before), and running the same config
again resumes from the checkpoint.

Verification (store format ``STORE_FORMAT`` = 2): ``config.json`` and ``results.json`` carry
``store_format``, the run's numerics fingerprint and a ``sha256`` seal of their content
(:func:`flatbook._io.seal`); a checkpoint carries a digest of its content and is verified on
disk before it replaces the previous one, which is kept until then (``checkpoint.prev.pt``;
removed once the run has finished). Checkpoints load with ``weights_only=True`` only. A damaged
file (truncated, garbage, edited, an unknown status) raises
:class:`~flatbook._io.DamagedFileError`: one line naming the file, what is wrong and the way out
(move it aside and run the same command again — the run resumes from the last good checkpoint
with the same numbers — or ``--restart``); nothing damaged is reused. Store format 1 (no seal,
no fingerprint; flatbook ≤ 0.1 before issue 16) is migrated on read: the fingerprint is taken
from its provenance. A newer format is refused with the advice to upgrade flatbook.

Numerics fingerprint (``numerics``): device, resolved thread count, dtype and torch version of
the process that computed the run. They change the numbers (float32 reductions differ with the
thread count) but not the run id (so a store computed on a GPU can be rendered elsewhere):
resuming under another fingerprint is refused (:class:`NumericsMismatchError`, naming the
field); loading under another one is flagged (a warning and ``Results.numerics_mismatch``) or
refused with ``numerics="refuse"``; :func:`check_numerics` refuses to mix fingerprints in one
study.

Concurrency and storage: one process trains a run id at a time — exclusive ``flock`` s on
``results_dir/.locks/<run_id>.lock`` and on the run folder (:mod:`flatbook.locks`), released by
the kernel when the holder dies (so kill −9 leaves nothing to clean up); a second start raises
:class:`RunLockedError` saying who holds it. Nothing is deleted: a run started over
(``overwrite=True``) is first moved to ``results_dir/stale/<run_id>-<reason>/``
(:func:`flatbook.store.move_aside`).
The run folder is proven writable before any training; a full disk raises
:class:`~flatbook._io.NoSpaceError` ("no space left …") with the previous checkpoint kept.

Run identity: ``config_hash`` = SHA-256 of the canonical JSON of the *semantic* fields of the
config (everything that changes the numbers); operational fields (``OPERATIONAL``: device,
threads, checkpoint frequency, progress bar, data folder) are excluded. ``run_id`` =
readable prefix + the first 10 hex digits of the hash.

Version policy of :func:`load_results` (the book must not show stale numbers):

- the stored config must equal the requested one (same ``config_hash``) — always;
- the flatbook version that wrote the results must have the same *major.minor* as the running
  one (bump the minor version when a change alters results);
- the *code hash* (SHA-256 of the numeric modules' source, ``flatbook._io.code_hash``) is
  compared too: a mismatch is refused with ``check="code"``, only warned about with the default
  ``check="version"``; ``check="none"`` skips the version checks (never the config check).

Parallel execution: :func:`sweep` calls :func:`run_one` (plain dict in, plain dict out) once
per config — the unit a job scheduler can submit; :mod:`flatbook.executors` submits it as one
submitit job per config (local processes or Slurm).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatbook import __version__, _validate, runspec
from flatbook import data as _data
from flatbook import models as _models
from flatbook import store as _store
from flatbook import train as _train
from flatbook._io import RESTART_DEFAULT as _io_RESTART_DEFAULT
from flatbook._io import (
    DamagedFileError,
    StoreProblem,
    check_writable,
    code_hash,
    load_checkpoint,
    previous_checkpoint,
    provenance,
    read_sealed,
    seal,
    stable_hash,
    write_json,
)
from flatbook.locks import (  # noqa: F401 - the store's lock, part of this module's API
    FOLDER_LOCK,
    LOCK_TRIES,
    RunLockedError,
    lock_holder,
    lock_path,
    run_lock,
)

DEFAULT_STEPS = runspec.DEFAULT_STEPS
DEFAULT_RESULTS_DIR = "results"
FINISHED = ("completed", "diverged")
STATUSES = ("completed", "diverged", "failed")
SHOW_STATUSES = (*STATUSES, "interrupted", "running", "damaged")
"""Statuses :func:`inspect_store` reports (``STATUSES`` are the ones ``results.json`` holds)."""
STORE_FORMAT = 2
"""Version of the store's file format (1: before seals and fingerprints; migrated on read)."""
NUMERICS = ("device", "threads", "dtype", "torch")
"""Fields of a run's numerics fingerprint (see :func:`numerics_fingerprint`)."""
NUMERICS_POLICIES = ("flag", "refuse", "ignore")
RESTART = ("start the run over: add --restart to the command (in Python: "
           "flatbook.experiment.run(config, overwrite=True))")  # fmt: skip
"""The way out of a damaged run that always works (recomputes it)."""
DEVICES = runspec.DEVICES
CHECKS = ("version", "code", "none")
OPERATIONAL = runspec.OPERATIONAL
"""Config fields that do not change the numbers: excluded from the config hash / run id."""

SMALL_MODEL = 2_000_000
"""Below this many parameters a CPU run uses one thread when ``threads`` is None: tiny
matrix products gain nothing from intra-op threads and lose a lot on a shared machine."""


STALE_TMP_S = 600
"""Temporary files older than this (seconds) in a run folder are leftovers of a killed write."""


class StaleResultsError(ValueError):
    """Stored results do not match the requested config or the running code version.

    ``reason`` (a key of :data:`flatbook.store.REASONS`) names why, and is the suffix of the
    folder the run is moved to when it is recomputed (``stale/<run_id>-<reason>/``)."""

    reason = "config-mismatch"

    def __init__(self, *args: Any, reason: str | None = None) -> None:
        super().__init__(*args)
        if reason is not None:
            self.reason = reason


class NumericsMismatchError(StoreProblem, StaleResultsError):
    """A run's numerics fingerprint differs from the one it would be resumed / mixed with."""

    reason = "other-numerics"


class NumericsWarning(UserWarning):
    """Stored results were computed under another numerics fingerprint (flagged, not
    refused: e.g. a GPU store rendered on a CPU)."""


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


# ------------------------------------------------------------------------------ results


@dataclass
class Results:
    """A finished (or failed) run read from ``results.json``.

    Attributes:
        run_dir: the run folder.
        config: the :class:`RunConfig`.
        data: the whole JSON document (``status``, ``records``, ``final``, ``provenance``,
            ``numerics``…; without its ``sha256`` seal).
        numerics_mismatch: fingerprint fields that differ from what this process would use
            for the config (``"threads: 1 ≠ 2"``), empty if none — set by :func:`load_results`.
    """

    run_dir: Path
    config: RunConfig
    data: dict[str, Any]
    numerics_mismatch: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.data["status"])

    @property
    def numerics(self) -> dict[str, Any]:
        """The numerics fingerprint the run was computed under (device, threads, dtype,
        torch)."""
        return dict(self.data.get("numerics") or {})

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self.data.get("records", []))

    @property
    def final(self) -> dict[str, Any]:
        return dict(self.data.get("final") or {})

    def series(self, key: str) -> np.ndarray:
        """Values of ``key`` over the records (NaN where a record lacks it), float [m]."""
        return np.array([float(r.get(key, math.nan)) for r in self.records])

    @property
    def keys(self) -> list[str]:
        """Record keys, in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.records:
            seen.update(dict.fromkeys(r))
        return list(seen)

    def load_model(self, map_location: str = "cpu") -> torch.nn.Module:
        """The trained network (from ``checkpoint.pt``, verified, ``weights_only=True``)."""
        cfg = self.config
        shape = tuple(self.data["input_shape"])
        net = _models.build(
            cfg.model, shape, int(self.data["n_classes"]), seed=cfg.seed,
            dtype=_data.as_dtype(cfg.dtype), **cfg.model_kw,
        )  # fmt: skip
        state = load_checkpoint(self.run_dir / "checkpoint.pt", map_location, restart=RESTART)
        if state is None:
            raise FileNotFoundError(
                f"{self.run_dir / 'checkpoint.pt'}: no checkpoint (the trained model) is kept; "
                + RESTART
            )
        net.load_state_dict(state["model"])
        return net.eval()

    def __repr__(self) -> str:
        f = self.final
        return (
            f"Results({self.config.run_id}, status={self.status}, steps={f.get('step')}, "
            f"train_loss={f.get('train_loss')}, test_acc={f.get('test_acc')})"
        )


def run_dir_for(config: RunConfig, results_dir: str | Path = DEFAULT_RESULTS_DIR) -> Path:
    """``results_dir / config.run_id``."""
    return Path(results_dir) / config.run_id


def _major_minor(v: str) -> tuple[str, ...]:
    return tuple(str(v).split(".")[:2])


# ------------------------------------------------------------------------------ numerics


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        try:
            return f"cuda:{torch.cuda.get_device_name(device)}"
        except (RuntimeError, AssertionError):  # pragma: no cover - no driver
            return "cuda"
    return device.type


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


ENGINES = ("solo", "ensemble")
"""Training engines: the solo loop (:func:`flatbook.train.train`) and the batched ensemble
(:mod:`flatbook.ensemble`). They agree to rounding, not bit for bit, so the engine is part of
the numerics fingerprint (absent = ``"solo"``, as every run before the ensemble engine)."""


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


def check_numerics(results: Sequence[Results]) -> None:
    """Refuse to mix numerics fingerprints in one study: every run (with a known
    fingerprint) must have been computed under the same device, thread count, dtype, torch
    version and training engine (solo loop or ensemble: they agree only to rounding).

    Raises:
        NumericsMismatchError: naming the first two runs that differ and the fields.
    """
    first: Results | None = None
    for r in results:
        if r is None or not r.numerics:
            continue
        if first is None:
            first = r
            continue
        diff = numerics_diff(first.numerics, r.numerics)
        if diff:
            raise NumericsMismatchError(
                f"runs {first.config.run_id} and {r.config.run_id} of one study were computed "
                f"under different numerics ({'; '.join(diff)}): their numbers are not "
                f"comparable; recompute one of them under the other's settings (--restart with "
                f"the same --device / --threads), or keep them in separate stores"
            )


# ------------------------------------------------------------------------------ reading files


def _config_doc(config: RunConfig, fp: Mapping[str, Any] | None) -> dict[str, Any]:
    doc = {"store_format": STORE_FORMAT, "run_id": config.run_id,
           "config_hash": config.config_hash, "config": config.semantic_dict()}  # fmt: skip
    if fp is not None:
        doc["numerics"] = dict(fp)
    return seal(doc)


def read_config_file(path: str | Path, way_out: str | None = None) -> dict[str, Any]:
    """Read and verify a run's ``config.json`` (seal, format, hash ↔ config, run id ↔
    folder); :class:`DamagedFileError` naming the file otherwise. Format 1 is migrated."""
    path = Path(path)
    if way_out is None:
        way_out = (f"move it aside (mv {path} {path}.damaged) and run the same command again "
                   f"(config.json is rewritten from the command and the run resumes from its "
                   f"checkpoint), or {RESTART}")  # fmt: skip
    doc = read_sealed(path, way_out, required=_sealed_format)
    _check_format(doc, path)
    try:
        cfg = RunConfig.from_dict(doc["config"])
        ok = cfg.config_hash == doc["config_hash"] and cfg.run_id == doc["run_id"]
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFileError(path, f"does not hold a valid run config ({e})", way_out) from None
    if not ok:
        raise DamagedFileError(path, "its config, hash and run id do not agree", way_out)
    if path.parent.name != doc["run_id"]:
        raise DamagedFileError(path, f"belongs to run {doc['run_id']}, not to this folder",
                               way_out)  # fmt: skip
    return doc


def _sealed_format(doc: Mapping[str, Any]) -> bool:
    """Documents of store format ≥ 2 must carry a seal (format 1 had none)."""
    fmt = doc.get("store_format", 1)
    return not isinstance(fmt, int) or fmt >= 2


def _check_format(doc: Mapping[str, Any], path: Path) -> None:
    fmt = doc.get("store_format", 1)
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise DamagedFileError(path, f"has an invalid store_format {fmt!r}",
                               f"move it aside and run the same command again, or {RESTART}")
    if fmt > STORE_FORMAT:
        raise StaleResultsError(
            f"{path} has store format {fmt}, newer than this flatbook reads ({STORE_FORMAT}): "
            f"upgrade flatbook (running {__version__}) to read this store", reason="newer-format"
        )


def _migrate_results(doc: dict[str, Any]) -> dict[str, Any]:
    """Store format 1 → 2 (in memory): the fingerprint from the provenance it recorded."""
    if doc.get("store_format", 1) >= STORE_FORMAT:
        return doc
    prov = doc.get("provenance") or {}
    dev = str(prov.get("device", "cpu"))
    fp = None
    if "threads" in prov:
        fp = {"device": "cpu" if dev == "cpu" else "cuda" if dev.startswith("cuda") else dev,
              "threads": int(prov["threads"]), "dtype": doc["config"].get("dtype"),
              "torch": (prov.get("packages") or {}).get("torch")}  # fmt: skip
    return {**doc, "store_format": STORE_FORMAT, "migrated_from": 1, "numerics": fp}


def _results_way_out(path: Path) -> str:
    return (f"move it aside (mv {path} {path}.damaged) and run the same command again — the "
            f"run is completed from its checkpoint with the same numbers — "
            f"or {RESTART}")  # fmt: skip


def _read_results(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """Read and verify ``results.json`` (seal, format, status, config ↔ hash ↔ folder);
    :class:`DamagedFileError` naming the file otherwise. Format 1 is migrated."""
    path = run_dir / "results.json"
    way_out = _results_way_out(path)
    doc = read_sealed(path, way_out, required=_sealed_format)
    _check_format(doc, path)
    if doc.get("status") not in STATUSES:
        raise DamagedFileError(
            path, f"has an unknown status {doc.get('status')!r} (allowed: {list(STATUSES)})",
            way_out,
        )  # fmt: skip
    try:
        cfg = RunConfig.from_dict(doc["config"])
        ok = cfg.config_hash == doc["config_hash"] and cfg.run_id == doc.get("run_id", cfg.run_id)
    except (KeyError, TypeError, ValueError) as e:
        raise DamagedFileError(path, f"does not hold a valid run config ({e})", way_out) from None
    if not ok or cfg.run_id != run_dir.name:
        raise DamagedFileError(path, "its config, hash and folder name do not agree", way_out)
    _store.check_results_doc(doc, path, way_out)
    return cfg, _migrate_results(doc)


def _version_key(v: str) -> tuple[int, ...]:
    """``"0.12.3"`` → ``(0, 12, 3)`` for ordering versions (non-digits end a part)."""
    out = []
    for part in v.split(".")[:3]:
        digits = "".join(itertools.takewhile(str.isdigit, part))
        out.append(int(digits) if digits else -1)
    return tuple(out)


def _check_version(doc: Mapping[str, Any], where: Path, check: str) -> None:
    if check == "none":
        return
    prov = doc.get("provenance") or {}
    v = str(prov.get("flatbook", "?"))
    if _major_minor(v) != _major_minor(__version__):
        newer = _version_key(v) > _version_key(__version__)
        raise StaleResultsError(
            f"{where} was written by flatbook {v}, running {__version__} (major.minor must "
            f"match: a minor version bump means results may change); re-run it (add --restart "
            f"to its command) or, to use these numbers anyway, pass check='none'",
            reason="newer-flatbook" if newer else "older-flatbook",
        )
    if prov.get("code_hash") != code_hash():
        msg = (
            f"{where} was written by different numeric code (code hash "
            f"{str(prov.get('code_hash'))[:10]} ≠ {code_hash()[:10]})"
        )
        if check == "code":
            raise StaleResultsError(msg + "; re-run it or pass check='version'",
                                    reason="other-code")
        warnings.warn(msg, UserWarning, stacklevel=3)


def _flag_numerics(res: Results, policy: str, requested: RunConfig,
                   stacklevel: int = 3) -> Results:  # fmt: skip
    n_params = int(res.data.get("n_params") or 0)
    diff = numerics_diff(res.numerics, expected_numerics(requested, n_params), engine=False)
    res.numerics_mismatch = diff
    if diff and policy != "ignore":
        msg = (f"{res.run_dir}: computed under other numerics than this process would use "
               f"({'; '.join(diff)}); its numbers are those of the stored run")  # fmt: skip
        if policy == "refuse":
            raise NumericsMismatchError(
                msg + ": recompute it here (--restart) or load with numerics='flag'"
            )
        warnings.warn(msg, NumericsWarning, stacklevel=stacklevel)
    return res


def load_results(
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    check: str = "version",
    status: Sequence[str] = FINISHED,
    numerics: str = "flag",
) -> Results | list[Results]:
    """Load stored results, refusing stale or damaged ones (see the module's policies).

    Args:
        results_dir: the result store.
        config: a :class:`RunConfig` (or dict): load exactly that run (``Results``); None:
            every run in the store with an accepted status (``list[Results]``, sorted by id;
            a damaged run is left out with a warning naming the file).
        check: ``"version"`` (default), ``"code"`` or ``"none"``.
        status: accepted statuses (default finished runs: completed and diverged).
        numerics: a run computed under another numerics fingerprint than this process would
            use (``config`` given): ``"flag"`` (default: a :class:`NumericsWarning` and
            ``Results.numerics_mismatch``), ``"refuse"`` (:class:`NumericsMismatchError`) or
            ``"ignore"``.

    Raises:
        FileNotFoundError: the run has no results yet (the message says how to produce them).
        StaleResultsError: config, version or (``check="code"``) code hash mismatch.
        DamagedFileError: ``results.json`` of the requested run is damaged.
        flatbook.store.StoreFaultError: the run folder or one of its files is a symbolic
            link (never followed out of the store), or not a regular file.
    """
    _train.check_choice(check, "check", CHECKS)
    _train.check_choice(numerics, "numerics", NUMERICS_POLICIES)
    for st in status:
        _train.check_choice(st, "status", STATUSES)
    root = Path(results_dir)
    if config is not None:
        cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
        rd = _store.check_run_folder(root, cfg.run_id)  # no links out of the store
        if not (rd / "results.json").is_file():
            raise FileNotFoundError(
                f"no results for run {cfg.run_id} in {root} (run it: flatbook.experiment.run("
                f"config, results_dir={str(root)!r}) or `python -m flatbook run ...`)"
            )
        stored, doc = _read_results(rd)
        if stored.config_hash != cfg.config_hash or doc.get("config_hash") != cfg.config_hash:
            diff = sorted(
                k for k, v in cfg.semantic_dict().items() if stored.semantic_dict().get(k) != v
            )
            raise StaleResultsError(f"{rd}: stored config differs from the requested one in {diff}")
        _check_version(doc, rd, check)
        if doc["status"] not in status:
            raise StaleResultsError(
                f"{rd}: status {doc['status']!r} not in {list(status)}"
                + (f" (error: {doc.get('error')})" if doc.get("error") else ""),
                reason="failed" if doc["status"] == "failed" else "config-mismatch",
            )
        # the requested config's operational fields (device, threads) decide what "here" is
        return _flag_numerics(Results(rd, stored, doc), numerics, cfg)
    out: list[Results] = []
    if not root.is_dir():
        return out
    for rd in sorted(p for p in root.iterdir() if (p / "results.json").is_file()):
        if rd.is_symlink() or (rd / "results.json").is_symlink():
            warnings.warn(f"left out {rd}: a symbolic link (not followed out of the store)",
                          UserWarning, stacklevel=2)
            continue
        try:
            stored, doc = _read_results(rd)
        except DamagedFileError as e:
            warnings.warn(f"left out a damaged run: {e}", UserWarning, stacklevel=2)
            continue
        _check_version(doc, rd, check)
        if doc["status"] in status:
            out.append(Results(rd, stored, doc))
    return out


# ------------------------------------------------------------------------------ inspection


@dataclass
class RunInfo:
    """One run folder as :func:`inspect_store` sees it (what ``python -m flatbook show``
    lists).

    Attributes:
        run_id: the folder name.
        status: one of ``SHOW_STATUSES`` — ``completed``/``diverged``/``failed`` (from
            ``results.json``), ``interrupted`` (a checkpoint or only a config, no results),
            ``running`` (its lock is held by a live process), ``damaged`` (a file does not
            verify: ``note`` says which and the way out).
        step, steps: steps done (the last record or checkpoint) and planned (None: unknown).
        final: the last record (losses, accuracies, λ_max, …).
        config: the semantic config dict (None if unreadable).
        numerics: the fingerprint (None if unknown).
        note: error or damage message, or who holds the lock.
        records: every record so far (for ``plot``; not part of :meth:`row`).
    """

    run_id: str
    status: str
    run_dir: Path
    step: int | None = None
    steps: int | None = None
    final: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    numerics: dict[str, Any] | None = None
    note: str = ""
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def row(self) -> dict[str, Any]:
        """Flat dict: run_id, status, step, steps, the config fields, the final record (a
        record key that names a config field, e.g. the report's ``loss`` value, is kept as
        ``record_<key>``: ``loss`` stays the loss function), numerics fields
        (``numerics_*``), note."""
        out: dict[str, Any] = {"run_id": self.run_id, "status": self.status, "step": self.step,
                               "steps": self.steps}  # fmt: skip
        for k, v in (self.config or {}).items():
            out.setdefault(k, v)
        for k, v in self.final.items():
            if k == "step":
                continue
            out[f"record_{k}" if k in out or k in RunConfig.__dataclass_fields__ else k] = v
        for k, v in (self.numerics or {}).items():
            out[f"numerics_{k}"] = v
        out["note"] = self.note
        return out


def inspect_run(run_dir: str | Path, results_dir: str | Path | None = None) -> RunInfo | None:
    """What state a run folder is in (see :class:`RunInfo`); None if it is not a run folder
    (no config.json, results.json or checkpoint). Every file read is verified, and whatever a
    file holds, the run is returned (unreadable, a symbolic link, wrong types: ``damaged``,
    the note naming the file)."""
    rd = Path(run_dir)
    root = Path(results_dir) if results_dir is not None else rd.parent
    if not any(p.exists() or p.is_symlink() for p in (rd / n for n in _store.RUN_FILES)):
        return None
    info = RunInfo(rd.name, "interrupted", rd)
    try:
        _store.check_run_folder(root, rd.name)
    except _store.StoreFaultError as e:
        info.status, info.note = "damaged", str(e)
        return info
    holder = lock_holder(root, rd.name)
    try:
        if (rd / "results.json").is_file():
            _inspect_finished(info, rd, holder)
        else:
            _inspect_partial(info, rd, holder)
    except DamagedFileError as e:
        if holder is not None:
            info.status, info.note = "running", holder
        else:
            info.status, info.note = "damaged", str(e)
    except StaleResultsError as e:
        info.status, info.note = "damaged", str(e)
    except Exception as e:  # noqa: BLE001 - one bad run never hides the others
        info.status, info.note = "damaged", f"{rd}: cannot be read ({type(e).__name__}: {e})"
    return info


def _inspect_finished(info: RunInfo, rd: Path, holder: str | None) -> None:
    """Fill ``info`` from a verified ``results.json`` (and ``config.json`` if present)."""
    stored, doc = _read_results(rd)
    if (rd / "config.json").is_file():
        read_config_file(rd / "config.json")
    info.status, info.config = doc["status"], stored.semantic_dict()
    info.final = dict(doc.get("final") or {})
    info.records = list(doc.get("records") or [])
    info.step = info.final.get("step", doc.get("steps_done"))
    if doc["status"] == "diverged" and doc.get("diverged_at") is not None:
        info.step = doc["diverged_at"]  # the last record may be long before the blow-up
        info.note = f"diverged at step {doc['diverged_at']}"
    info.steps = doc.get("steps")
    info.numerics = doc.get("numerics")
    if doc.get("error"):
        info.note = str(doc["error"])
    if holder is not None and doc["status"] == "failed":
        info.status, info.note = "running", f"retried by {holder}"


def _inspect_partial(info: RunInfo, rd: Path, holder: str | None) -> None:
    """Fill ``info`` for a run without results: its config and newest good checkpoint."""
    ckpt = rd / "checkpoint.pt"
    if (rd / "config.json").is_file():
        cdoc = read_config_file(rd / "config.json")
        info.config, info.numerics = cdoc["config"], cdoc.get("numerics")
    if holder is not None:
        info.status, info.note = "running", holder
    state = load_checkpoint(ckpt, "cpu", restart=RESTART)
    if state is not None:
        where = ckpt if ckpt.is_file() else previous_checkpoint(ckpt)
        way = f"move it aside and run the same command again, or {RESTART}"
        recs = state.get("records") or []
        _store.check_records(recs, where, way)
        step = state.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise DamagedFileError(where, f"holds step {_store.printable(repr(step))[:40]}, "
                                          f"not a step count", way)  # fmt: skip
        info.final = dict(recs[-1]) if recs else {}
        info.records = list(recs)
        info.step = step
        meta = state.get("meta")
        if info.numerics is None and isinstance(meta, dict):
            num = meta.get("numerics")
            info.numerics = num if isinstance(num, dict) else None
    else:
        info.step = 0
    if info.config is not None and info.config.get("steps") is not None:
        info.steps = int(info.config["steps"])
    if info.status == "interrupted":
        info.note = "resume: run the same command again"


def inspect_store(results_dir: str | Path = DEFAULT_RESULTS_DIR, *,
                  _depth: int = 0) -> list[RunInfo]:  # fmt: skip
    """Every run folder of the store with its state (:func:`inspect_run`), sorted by run id;
    damaged, interrupted and running runs included, never aborting on one bad folder. A
    folder that holds run folders (e.g. an experiment setting's ``measure-<hash>/``) is
    listed too, its runs named ``<folder>/<run_id>``.

    Raises:
        FileNotFoundError: ``results_dir`` does not exist; NotADirectoryError: it is a file.
    """
    root = Path(results_dir)
    if not root.exists():
        raise FileNotFoundError(f"no result store at {root} (no such folder)")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is a file, not a result store folder")
    out = []
    for rd in sorted(root.iterdir()):
        if rd.name == _store.STALE_DIR:
            continue  # runs moved aside: kept, never listed as runs (see stale_runs)
        if rd.is_symlink():
            out.append(RunInfo(rd.name, "damaged", rd, note=(
                f"{rd} is a symbolic link: not followed (flatbook stays inside the store); "
                f"replace it by the folder itself or remove it")))
            continue
        if rd.is_dir() and not rd.name.startswith("."):
            info = inspect_run(rd, root)
            if info is not None:
                out.append(info)
            elif _depth < 1:  # a store of stores (e.g. the chapters' measure-<hash>/ folders)
                for sub in inspect_store(rd, _depth=_depth + 1):
                    sub.run_id = f"{rd.name}/{sub.run_id}"
                    out.append(sub)
    return out


# ------------------------------------------------------------------------------ run


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def _data_options(config: RunConfig) -> dict[str, Any]:
    """The arguments of ``flatbook.data.load`` for ``config`` (also the key under which
    :func:`validate` loads each distinct data set once)."""
    return {"name": config.dataset, "classes": config.classes, "n_train": config.n_train,
            "n_test": config.n_test, "seed": config.data_seed, "standardize": config.standardize,
            "one_hot": True, "flatten": config.model == "mlp", "dtype": config.dtype,
            "data_dir": config.data_dir}  # fmt: skip


def _data_key(config: RunConfig) -> str:
    return stable_hash(_data_options(config))


def _load_data(config: RunConfig) -> _data.Dataset:
    return _data.load(**_data_options(config))


def _resolve_steps(config: RunConfig, ds: _data.Dataset) -> int:
    if config.eval_size > ds.n_train:
        raise ValueError(
            f"eval_size={config.eval_size} exceeds the training set (n_train={ds.n_train}); "
            f"use eval_size ≤ {ds.n_train} (--eval-size {ds.n_train})"
        )
    B = _train.resolve_batch_size(config.batch_size, ds.n_train)
    spe = max(1, ds.n_train // B)
    steps = config.steps if config.steps is not None else int(config.epochs) * spe
    _train.measurement_steps(steps, config.measure_every, config.schedule)
    return int(steps)


def _build_model(config: RunConfig, ds: _data.Dataset) -> torch.nn.Module:
    try:
        return _models.build(
            config.model, ds.input_shape, ds.n_classes, seed=config.seed,
            dtype=_data.as_dtype(config.dtype), **config.model_kw,
        )  # fmt: skip
    except (RuntimeError, TypeError) as e:  # torch's own errors: name the options instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"model_kw {dict(config.model_kw)} cannot build model {config.model!r} for inputs "
            f"{tuple(ds.input_shape)} ({first}); allowed options: "
            f"{list(_models.MODEL_OPTIONS[config.model])}"
        ) from None


def prepare(config: RunConfig) -> tuple[_data.Dataset, torch.nn.Module, int]:
    """Load the data and build the model for ``config`` and resolve the step count; runs the
    data-dependent checks (batch size vs. training-set size, schedule vs. steps, model vs.
    input shape) before any training.

    Returns ``(dataset, model, steps)``.
    """
    ds = _load_data(config)
    steps = _resolve_steps(config, ds)
    return ds, _build_model(config, ds), steps


def validate(configs: Iterable[RunConfig]) -> None:
    """Run the data-dependent checks of :func:`prepare` for many configs, loading each distinct
    data set and building each distinct architecture once (a sweep fails before its first run
    instead of part-way through)."""
    datasets: dict[tuple, _data.Dataset] = {}
    archs: set[str] = set()
    for c in configs:
        key = _data_key(c)
        if key not in datasets:
            datasets[key] = _load_data(c)
        ds = datasets[key]
        _resolve_steps(c, ds)
        arch = stable_hash([c.model, c.model_kw, list(ds.input_shape), ds.n_classes, c.dtype])
        if arch not in archs:
            _build_model(c, ds)
            archs.add(arch)


def run(
    config: RunConfig,
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    *,
    overwrite: bool = False,
    callback: _train.Callback | None = None,
    measure: _train.MeasureFn | None = None,
) -> Results:
    """Run ``config`` (or resume it, or return its finished results) and store the results.

    - finished results for this config exist (and ``overwrite`` is False): they are verified,
      loaded and returned (no training; another numerics fingerprint is flagged);
    - a checkpoint exists: training resumes from it (refused under another numerics
      fingerprint: :class:`NumericsMismatchError`);
    - a store file is damaged: :class:`~flatbook._io.DamagedFileError` naming it and the way
      out, before any training and without recording anything;
    - the run diverges: ``status="diverged"`` with ``diverged_at`` (no exception);
    - any other error: ``results.json`` records ``status="failed"`` and the error, then the
      exception propagates. KeyboardInterrupt / SIGTERM: the checkpoint is kept, no
      ``results.json`` is written, the interrupt propagates. A full disk:
      :class:`~flatbook._io.NoSpaceError`, the previous checkpoint kept.

    One process trains a run id at a time (:func:`run_lock`); the run folder is proven
    writable before any training.

    Store faults (a symbolic link for the run folder, ``.locks`` or a run file; a folder where
    a file should be) raise :class:`flatbook.store.StoreFaultError` before anything is loaded.

    Args:
        overwrite: start over (the CLI's ``--restart``): the run's folder is first moved aside
            to ``results_dir/stale/<run_id>-<reason>/`` (nothing is deleted; a
            :class:`flatbook.store.MovedAsideWarning` names it and the reason).
        measure: override the measurement function (default: built from ``config.measures``).
    """
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig; got {type(config).__name__}")
    rd = run_dir_for(config, results_dir)
    res_path, cfg_path, ckpt = rd / "results.json", rd / "config.json", rd / "checkpoint.pt"
    prev = previous_checkpoint(ckpt)
    _store.check_run_folder(results_dir, config.run_id, files=not overwrite)
    if not overwrite and res_path.is_file():
        _, doc = _read_results(rd)  # verified: a damaged file is named, never reused
        if doc.get("status") in FINISHED:
            if cfg_path.is_file():
                read_config_file(cfg_path)  # a damaged config.json is named here too
            else:  # moved aside: rewritten from the results (best effort: may be read-only)
                with contextlib.suppress(OSError):
                    write_json(cfg_path, _config_doc(config, doc.get("numerics")))
            return _load_finished(config, results_dir)
    device = _resolve_device(config.device)
    t0 = time.perf_counter()
    ds, net, steps = prepare(config)  # data-dependent checks: before anything is written
    n_params = sum(p.numel() for p in net.parameters())
    threads = resolve_threads(config, device, n_params, note=True)
    fp = numerics_fingerprint(device, threads, config.dtype)
    if overwrite:
        _store.say_moved(restart_aside(config, results_dir))
    check_writable(rd, "run folder")
    with run_lock(results_dir, config.run_id):
        finished = open_run(config, results_dir, fp)
        if finished is not None:  # finished by another process meanwhile
            return finished
        old_threads = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            net = net.to(device)
            if measure is None:
                measure = default_measure(config, ds)
            result = _train.train(
                net, ds.X_train.to(device), ds.Y_train.to(device), ds.X_test.to(device),
                ds.Y_test.to(device), options=runspec.train_options(config, steps=steps),
                measure=measure, checkpoint_path=ckpt, callback=callback,
                checkpoint_meta={"run_id": config.run_id, "config_hash": config.config_hash,
                                 "numerics": fp},
                desc=config.run_id[: config.run_id.rfind("-")],
            )  # fmt: skip
        except KeyboardInterrupt:
            raise
        except _train.CheckpointMismatchError as e:
            if e.differ == ["numerics"]:
                diff = numerics_diff((e.stored or {}).get("numerics"), fp)
                raise NumericsMismatchError(
                    f"{ckpt} was written under other numerics ({'; '.join(diff)}): resuming "
                    f"here would mix numbers — resume it with the same settings, or {RESTART}"
                ) from None
            raise
        except DamagedFileError as e:  # a checkpoint: name the store's way out
            raise DamagedFileError(e.path, e.problem,
                                   e.way_out.replace(_io_RESTART_DEFAULT, RESTART)) from None
        except (StoreProblem, _train.BadDataError):
            raise  # nothing to record: the store or the data, not the run, is at fault
        except Exception as e:
            doc = _base_doc(config, ds, net, fp)
            doc.update(status="failed", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc(limit=20))  # fmt: skip
            doc["provenance"] = {**provenance(), "elapsed_s": time.perf_counter() - t0,
                                 "device": str(device), "threads": threads}  # fmt: skip
            with contextlib.suppress(OSError):
                write_json(res_path, seal(doc))
            raise
        finally:
            torch.set_num_threads(old_threads)
        doc = _base_doc(config, ds, net, fp)
        doc.update(result.summary())
        doc["provenance"] = {
            **provenance(),
            "elapsed_s": time.perf_counter() - t0,
            "resumed_from": result.resumed_from,
            "device": str(device),
            "threads": threads,
        }
        write_json(res_path, seal(doc))
        prev.unlink(missing_ok=True)  # finished: checkpoint.pt is the trained model
    return Results(rd, config, _read_results(rd)[1])


def default_measure(config: RunConfig, ds: _data.Dataset) -> _train.MeasureFn | None:
    """The measurement a run takes from ``config.measures`` when none is given (``None`` for
    no measures): :func:`flatbook.train.make_measure` with the run's tolerance, η, B and the
    training-set size (T7's p = B/n)."""
    if not config.measures:
        return None
    B = _train.resolve_batch_size(config.batch_size, ds.n_train)
    return _train.make_measure(config.measures, tol=config.sharpness_tol, lr=config.lr,
                               batch_size=None if config.batch_size == "full" else B,
                               n_train=ds.n_train)


def open_run(config: RunConfig, results_dir: str | Path,
             fp: Mapping[str, Any]) -> Results | None:
    """What a run does inside its lock before training (both engines: :func:`run` and
    :mod:`flatbook.ensemble_runs`): the finished results if another process finished the run
    meanwhile, else ``None`` after dropping a failed attempt and stale temporary files,
    refusing a config file of another config or a checkpoint of other numerics (``fp``,
    :func:`numerics_fingerprint`), and writing ``config.json``."""
    rd = run_dir_for(config, results_dir)
    res_path, cfg_path, ckpt = rd / "results.json", rd / "config.json", rd / "checkpoint.pt"
    prev = previous_checkpoint(ckpt)
    if res_path.is_file():
        _, doc = _read_results(rd)
        if doc.get("status") in FINISHED:
            return _load_finished(config, results_dir)
        res_path.unlink()  # a failed attempt: try again
    for tmp in rd.glob(".*.tmp"):  # left by a process killed mid-write (SIGKILL, power loss)
        if time.time() - tmp.stat().st_mtime > STALE_TMP_S:
            tmp.unlink(missing_ok=True)
    cfg_doc = _config_doc(config, fp)
    if cfg_path.is_file():
        stored = read_config_file(cfg_path)
        if stored["config_hash"] != config.config_hash:
            raise DamagedFileError(cfg_path, "describes another config than this run's",
                                   f"move it aside and run the same command again, "
                                   f"or {RESTART}")
        diff = numerics_diff(stored.get("numerics"), fp)
        if diff and (ckpt.is_file() or prev.is_file()):
            raise NumericsMismatchError(
                f"run {config.run_id} was started under other numerics ({'; '.join(diff)}; "
                f"{cfg_path}): resuming here would mix numbers — resume it with the same "
                f"settings (engine, --threads {stored['numerics'].get('threads')}, --device as "
                f"before), or {RESTART}"
            )
    elif ckpt.is_file() or prev.is_file():  # config.json moved aside: the checkpoint's
        state = load_checkpoint(ckpt, "cpu", restart=RESTART)  # fingerprint decides
        stored_fp = ((state or {}).get("meta") or {}).get("numerics")
        diff = numerics_diff(stored_fp, fp)
        if diff:
            raise NumericsMismatchError(
                f"{ckpt} was written under other numerics ({'; '.join(diff)}): resuming "
                f"here would mix numbers — resume it with the same settings (engine, "
                f"--threads {(stored_fp or {}).get('threads')}), or {RESTART}"
            )
    if not cfg_path.is_file() or read_config_file(cfg_path) != _unsealed(cfg_doc):
        write_json(cfg_path, cfg_doc)
    return None


def restart_aside(config: RunConfig, results_dir: str | Path) -> list[_store.MovedRun]:
    """Move the stored run of ``config`` aside before it is started over (under its lock):
    ``stale/<run_id>-<reason>/``, the reason being why it could not be reused (damaged, newer
    format or flatbook, other code, failed) or ``restart``. Returns what moved (nothing when
    the run has no files)."""
    rd = run_dir_for(config, results_dir)
    with run_lock(results_dir, config.run_id):
        if not any((rd / n).exists() for n in _store.RUN_FILES):
            return []
        reason = _restart_reason(config, results_dir)
        to = _store.move_aside(results_dir, config.run_id, reason)
    return [_store.MovedRun(config.run_id, reason, to)]


def _restart_reason(config: RunConfig, results_dir: str | Path) -> str:
    """Why a stored run is started over (a key of :data:`flatbook.store.REASONS`): what is
    wrong with it (damaged, stale, failed), else ``restart`` (asked for)."""
    rd = run_dir_for(config, results_dir)
    try:
        try:
            load_results(results_dir, config, check="code", status=STATUSES, numerics="ignore")
        except FileNotFoundError:  # an interrupted run: are its config and checkpoint sound?
            if (rd / "config.json").is_file():
                read_config_file(rd / "config.json")
            load_checkpoint(rd / "checkpoint.pt", "cpu", restart=RESTART)
    except StaleResultsError as e:
        return e.reason
    except (DamagedFileError, _store.StoreFaultError, OSError):
        return "damaged"
    return "restart"


def _unsealed(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "sha256"}


def _load_finished(config: RunConfig, results_dir: str | Path) -> Results:
    return load_results(results_dir, config, check="none")  # type: ignore[return-value]


def _base_doc(config: RunConfig, ds: Any, net: Any,
              fp: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    doc: dict[str, Any] = {
        "store_format": STORE_FORMAT,
        "run_id": config.run_id,
        "config_hash": config.config_hash,
        "config": config.semantic_dict(),
        "seed": config.seed,
        "numerics": dict(fp) if fp is not None else None,
    }
    if ds is not None:
        doc.update(
            n_train=ds.n_train, n_test=ds.n_test, n_classes=ds.n_classes,
            input_shape=list(ds.input_shape), classes=list(ds.classes),
        )  # fmt: skip
    if net is not None:
        doc["n_params"] = int(sum(p.numel() for p in net.parameters()))
    return doc


def run_one(
    config: Mapping[str, Any],
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    *,
    callback: _train.Callback | None = None,
) -> dict:
    """Job entry point: run one config given as a plain dict; never raises for a failed run
    (the failure is recorded in ``results.json`` with ``status="failed"`` and the error).

    Returns ``{"run_id", "status", "skipped", "error", "final"}`` (plain JSON-able dict), so a
    scheduler (e.g. submitit, see :mod:`flatbook.executors`) can pickle the call and its result.
    A store problem (damaged file, full disk, run locked by another process, other numerics)
    is returned with status ``"damaged"`` / ``"interrupted"`` / ``"running"`` / ``"failed"``
    and its message, and not recorded (the run is not at fault).
    ``callback`` is passed to :func:`run` (monitoring; raising KeyboardInterrupt in it
    checkpoints and stops the run).
    """
    cfg = RunConfig.from_dict(config)
    rd = run_dir_for(cfg, results_dir)
    skipped = False
    if (rd / "results.json").is_file():
        try:
            skipped = _read_results(rd)[1].get("status") in FINISHED
        except (OSError, ValueError):
            skipped = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NumericsWarning)  # summarised in the outcome
            res = run(cfg, results_dir, callback=callback)
        return {"run_id": cfg.run_id, "status": res.status, "skipped": skipped, "error": None,
                "final": res.final}  # fmt: skip
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - recorded in results.json
        return failure_outcome(cfg, rd, e)


def failure_outcome(cfg: RunConfig, rd: Path, e: BaseException) -> dict[str, Any]:
    """Record a run that raised (call inside the ``except`` block) and return its outcome.

    A run that failed before training (e.g. data missing) has no ``results.json`` yet: one is
    written atomically with ``status="failed"``, the error and its traceback, so a sweep can go
    on and the failure is not lost. A store problem (:class:`~flatbook._io.StoreProblem`:
    damaged file, full disk, locked run, other numerics) and bad data are not failures of the
    run: nothing is written, the outcome carries the problem's status. Returns the
    ``run_one`` outcome dict.
    """
    error = f"{type(e).__name__}: {e}"
    if isinstance(e, StoreProblem):
        return {"run_id": cfg.run_id, "status": e.status, "skipped": False, "error": error,
                "final": {}}  # fmt: skip
    if not (rd / "results.json").is_file():
        doc = _base_doc(cfg, None, None)
        doc.update(status="failed", error=error, traceback=traceback.format_exc(limit=20))
        doc["provenance"] = provenance()
        with contextlib.suppress(OSError):
            write_json(rd / "results.json", seal(doc))
    return {"run_id": cfg.run_id, "status": "failed", "skipped": False, "error": error,
            "final": {}}  # fmt: skip


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


def sweep(
    configs: Iterable[RunConfig],
    results_dir: str | Path = DEFAULT_RESULTS_DIR,
    *,
    runner: Callable[[Mapping[str, Any], str | Path], dict] = run_one,
    progress: bool = True,
) -> list[dict]:
    """Run every config (skipping finished ones; continuing after a diverged or failed run).

    Each config goes through ``runner(config.to_dict(), results_dir)`` (default
    :func:`run_one`, the unit a job scheduler can submit). Returns the runner's summaries in
    order. Duplicate configs (same run id) are run once.
    """
    configs = list(configs)
    for c in configs:
        if not isinstance(c, RunConfig):
            raise TypeError(f"sweep needs RunConfig objects; got {type(c).__name__}")
    if configs:
        check_writable(results_dir)  # before the first run, not once per run
    seen: dict[str, dict] = {}
    out: list[dict] = []
    from tqdm.auto import tqdm

    for c in tqdm(configs, desc="sweep", unit="run", disable=not progress or len(configs) < 2):
        if c.run_id not in seen:
            seen[c.run_id] = runner(c.to_dict(), str(results_dir))
        out.append(seen[c.run_id])
    return out


__all__ = [
    "DEFAULT_STEPS",
    "OPERATIONAL",
    "Results",
    "RunConfig",
    "StaleResultsError",
    "grid",
    "load_results",
    "prepare",
    "run",
    "run_dir_for",
    "run_one",
    "sweep",
    "validate",
]
