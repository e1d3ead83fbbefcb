"""Store inspection: the state of every run folder (what ``python -m flatbook show`` and
``plot`` list), damaged, interrupted and running runs included. Re-exported by
:mod:`flatbook.experiment`.

Every file read is verified (:mod:`flatbook.run_results`); one bad folder never hides the
others: it is listed as ``damaged`` with a note naming the file and the way out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flatbook import store as _store
from flatbook._io import DamagedFileError, load_checkpoint, previous_checkpoint
from flatbook.locks import lock_holder
from flatbook.run_config import DEFAULT_RESULTS_DIR, RunConfig
from flatbook.run_results import (
    RESTART,
    STATUSES,
    StaleResultsError,
    _read_results,
    read_config_file,
)

SHOW_STATUSES = (*STATUSES, "interrupted", "running", "damaged")
"""Statuses :func:`inspect_store` reports (``STATUSES`` are the ones ``results.json`` holds)."""


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


__all__ = ["SHOW_STATUSES", "RunInfo", "inspect_run", "inspect_store"]
