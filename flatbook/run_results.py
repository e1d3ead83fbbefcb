"""The result store's documents: writing and verifying ``config.json`` / ``results.json``,
:class:`Results` and :func:`load_results`. Re-exported by :mod:`flatbook.experiment`.

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
``store_format``, the run's numerics fingerprint (:mod:`flatbook.run_numerics`) and a
``sha256`` seal of their content (:func:`flatbook._io.seal`); a checkpoint carries a digest of
its content and is verified on disk before it replaces the previous one, which is kept until
then (``checkpoint.prev.pt``; removed once the run has finished). Checkpoints load with
``weights_only=True`` only. A damaged file (truncated, garbage, edited, an unknown status)
raises :class:`~flatbook._io.DamagedFileError`: one line naming the file, what is wrong and
the way out (move it aside and run the same command again — the run resumes from the last good
checkpoint with the same numbers — or ``--restart``); nothing damaged is reused. Store format 1
(no seal, no fingerprint; flatbook ≤ 0.1) is migrated on read: the fingerprint is taken from
its provenance. A newer format is refused with the advice to upgrade flatbook.

Version policy of :func:`load_results` (the book must not show stale numbers):

- the stored config must equal the requested one (same ``config_hash``) — always;
- the flatbook version that wrote the results must have the same *major.minor* as the running
  one (bump the minor version when a change alters results);
- the *code hash* (SHA-256 of the numeric modules' source, ``flatbook._io.code_hash``) is
  compared too: a mismatch is refused with ``check="code"``, only warned about with the default
  ``check="version"``; ``check="none"`` skips the version checks (never the config check).

Loading a run computed under another numerics fingerprint than this process would use is
flagged (a :class:`NumericsWarning` and ``Results.numerics_mismatch``) or refused with
``numerics="refuse"``; :func:`check_numerics` refuses to mix fingerprints in one study.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flatbook import __version__
from flatbook import data as _data
from flatbook import models as _models
from flatbook import store as _store
from flatbook import train as _train
from flatbook._io import (
    DamagedFileError,
    StoreProblem,
    code_hash,
    load_checkpoint,
    read_sealed,
    seal,
)
from flatbook.run_config import DEFAULT_RESULTS_DIR, RunConfig
from flatbook.run_numerics import expected_numerics, numerics_diff

FINISHED = ("completed", "diverged")
STATUSES = ("completed", "diverged", "failed")
STORE_FORMAT = 2
"""Version of the store's file format (1: before seals and fingerprints; migrated on read)."""
NUMERICS_POLICIES = ("flag", "refuse", "ignore")
RESTART = ("start the run over: add --restart to the command (in Python: "
           "flatbook.experiment.run(config, overwrite=True))")  # fmt: skip
"""The way out of a damaged run that always works (recomputes it)."""
CHECKS = ("version", "code", "none")


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
        """The run's status: ``"completed"``, ``"diverged"`` or ``"failed"``."""
        return str(self.data["status"])

    @property
    def numerics(self) -> dict[str, Any]:
        """The numerics fingerprint the run was computed under (device, threads, dtype,
        torch)."""
        return dict(self.data.get("numerics") or {})

    @property
    def records(self) -> list[dict[str, Any]]:
        """The measurement records in step order (a copy): flat ``str → float`` dicts with
        ``step``, ``epoch``, train / test loss and accuracy and the measured keys."""
        return list(self.data.get("records", []))

    @property
    def final(self) -> dict[str, Any]:
        """The values at the end of training (a copy; empty for a run that failed first)."""
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


def _major_minor(v: str) -> tuple[str, ...]:
    """``"0.12.3"`` → ``("0", "12")``."""
    return tuple(str(v).split(".")[:2])


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


def _config_doc(config: RunConfig, fp: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sealed ``config.json`` document of ``config`` (fingerprint ``fp`` when known)."""
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
    """Refuse an invalid ``store_format`` (damaged) or a newer one (upgrade flatbook)."""
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
    """The way out of a damaged ``results.json`` at ``path``."""
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


def _check_version(doc: Mapping[str, Any], where: Path, check: str,
                   stacklevel: int = 3) -> None:  # fmt: skip
    """Apply the version policy ``check`` to a stored document: another flatbook
    major.minor is refused (:class:`StaleResultsError`), another code hash refused with
    ``check="code"`` and warned about (at ``stacklevel``) with ``check="version"``."""
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
        warnings.warn(msg, UserWarning, stacklevel=stacklevel)


def _flag_numerics(res: Results, policy: str, requested: RunConfig,
                   stacklevel: int = 3) -> Results:  # fmt: skip
    """Compare ``res``'s fingerprint with the one ``requested`` would get here: the
    differences go to ``res.numerics_mismatch``; ``policy`` ``"flag"`` warns (at
    ``stacklevel``), ``"refuse"`` raises :class:`NumericsMismatchError`."""
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
    if config is None:
        return _load_all(root, check, status)
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    return _load_one(root, cfg, check, status, numerics)


def _load_one(root: Path, cfg: RunConfig, check: str, status: Sequence[str],
              numerics: str) -> Results:  # fmt: skip
    """:func:`load_results` of one run: verified, same config, version policy ``check``,
    status in ``status``, numerics policy ``numerics`` (warnings attributed to the caller of
    :func:`load_results`)."""
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
    _check_version(doc, rd, check, stacklevel=4)
    if doc["status"] not in status:
        raise StaleResultsError(
            f"{rd}: status {doc['status']!r} not in {list(status)}"
            + (f" (error: {doc.get('error')})" if doc.get("error") else ""),
            reason="failed" if doc["status"] == "failed" else "config-mismatch",
        )
    # the requested config's operational fields (device, threads) decide what "here" is
    return _flag_numerics(Results(rd, stored, doc), numerics, cfg, stacklevel=4)


def _load_all(root: Path, check: str, status: Sequence[str]) -> list[Results]:
    """:func:`load_results` of every run in the store ``root`` whose status is in ``status``,
    sorted by run id; symbolic links and damaged runs are left out with a warning."""
    out: list[Results] = []
    if not root.is_dir():
        return out
    for rd in sorted(p for p in root.iterdir() if (p / "results.json").is_file()):
        if rd.is_symlink() or (rd / "results.json").is_symlink():
            warnings.warn(f"left out {rd}: a symbolic link (not followed out of the store)",
                          UserWarning, stacklevel=3)
            continue
        try:
            stored, doc = _read_results(rd)
        except DamagedFileError as e:
            warnings.warn(f"left out a damaged run: {e}", UserWarning, stacklevel=3)
            continue
        _check_version(doc, rd, check, stacklevel=4)
        if doc["status"] in status:
            out.append(Results(rd, stored, doc))
    return out


def _unsealed(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` without its ``sha256`` seal (what :func:`read_config_file` returns)."""
    return {k: v for k, v in doc.items() if k != "sha256"}


def _load_finished(config: RunConfig, results_dir: str | Path) -> Results:
    """The finished run of ``config``, verified, with no version check (it was just found
    finished by this process's store logic)."""
    return load_results(results_dir, config, check="none")  # type: ignore[return-value]


def _base_doc(config: RunConfig, ds: Any, net: Any,
              fp: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The part of ``results.json`` every run has: format, run id, config and its hash, seed,
    fingerprint ``fp``; with the dataset ``ds`` its sizes and classes, with the network
    ``net`` its parameter count."""
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


__all__ = ["CHECKS", "FINISHED", "NUMERICS_POLICIES", "RESTART", "STATUSES", "STORE_FORMAT",
           "NumericsMismatchError", "NumericsWarning", "Results", "StaleResultsError",
           "check_numerics", "load_results", "read_config_file"]  # fmt: skip
