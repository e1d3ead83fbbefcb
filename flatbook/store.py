"""The result store's own safety rules: a run that cannot be reused is moved aside, never
deleted; the store never reaches outside its folder; what is read from it is checked before it
is printed.

- :func:`move_aside` renames ``results_dir/<run_id>/`` to ``results_dir/stale/<run_id>-<reason>/``
  (atomic ``os.rename`` within the store; ``-2``, ``-3``, … when that name is taken). Every
  path that would overwrite a stored run (``analysis.obtain`` recomputing a stale run,
  ``experiment.run(overwrite=True)``, the CLI's ``--restart``) moves it aside first and says so
  (:func:`moved_message`, :class:`MovedAsideWarning`).
- :func:`check_run_folder` refuses a run folder, ``.locks`` folder or run file that is a
  symbolic link (it would make flatbook read or write outside ``results_dir``) and names store
  faults (a folder where ``results.json`` should be, ``.locks`` a file) before any training.
- :func:`check_results_doc` / :func:`check_records` check the types of the fields ``show``
  prints (a damaged run is listed as damaged, the rest still listed); :func:`printable` strips
  control characters from any stored string before it reaches a terminal.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatbook._io import DamagedFileError, StoreProblem

STALE_DIR = "stale"
"""Folder of the store (``results_dir/stale``) that keeps runs moved aside; never a run."""

REASONS: dict[str, str] = {
    "newer-format": "written in a newer store format",
    "newer-flatbook": "written by a newer flatbook version",
    "older-flatbook": "written by an older flatbook version",
    "other-code": "written by other numeric code",
    "other-numerics": "computed under other numerics",
    "config-mismatch": "its stored config differs from the requested one",
    "failed": "a failed attempt",
    "damaged": "a stored file is damaged",
    "restart": "started over on request (--restart / overwrite=True)",
}
"""Why a run was moved aside (the suffix of its folder under ``stale/``) → a sentence."""

RUN_FILES = ("config.json", "results.json", "checkpoint.pt", "checkpoint.prev.pt")


class StoreFaultError(StoreProblem, ValueError):
    """The store itself is unusable for this run (a symbolic link leading out of it, a folder
    where a file should be, ``.locks`` a file); named before any training."""

    status = "damaged"


class MovedAsideWarning(UserWarning):
    """Stored runs were moved aside (kept under ``stale/``) so that they can be recomputed."""


@dataclass(frozen=True)
class MovedRun:
    """One run moved aside: its id, the reason (a key of :data:`REASONS`) and where it is."""

    run_id: str
    reason: str
    to: Path

    def __str__(self) -> str:
        return f"{self.run_id}: {REASONS[self.reason]} — moved to {self.to}"


def _check_run_id(run_id: str) -> None:
    if (not isinstance(run_id, str) or not run_id or run_id in (".", "..", STALE_DIR)
            or "/" in run_id or "\\" in run_id or "\0" in run_id):  # fmt: skip
        raise ValueError(f"run_id must be one folder name inside the store; got {run_id!r}")


def move_aside(results_dir: str | Path, run_id: str, reason: str) -> Path:
    """Move the run folder ``results_dir/<run_id>`` to ``results_dir/stale/<run_id>-<reason>``
    (``-2``, ``-3``, … appended if taken) by one atomic ``os.rename`` inside the store, and
    return the new path. Nothing is copied or deleted; a run folder that is a symbolic link is
    refused (:class:`StoreFaultError`). The caller holds the run's lock.

    Raises:
        ValueError: ``reason`` not in :data:`REASONS` or ``run_id`` not a plain folder name.
        FileNotFoundError: there is no such run folder.
    """
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {sorted(REASONS)}; got {reason!r}")
    _check_run_id(run_id)
    root = Path(results_dir)
    src = root / run_id
    if src.is_symlink():
        raise StoreFaultError(f"{src} is a symbolic link, not a run folder of {root}: remove "
                              f"the link (flatbook never follows links out of the store)")
    if not src.is_dir():
        raise FileNotFoundError(f"no run folder {src} to move aside")
    stale = root / STALE_DIR
    if stale.is_symlink() or (stale.exists() and not stale.is_dir()):
        raise StoreFaultError(f"{stale} must be a folder of the store (it is a link or a file)"
                              f": move it away and run the same command again")
    stale.mkdir(exist_ok=True)
    for n in range(1, 10_000):
        dest = stale / (f"{run_id}-{reason}" + (f"-{n}" if n > 1 else ""))
        if dest.exists() or dest.is_symlink():
            continue
        try:
            os.rename(src, dest)  # atomic; fails rather than replace a non-empty folder
        except OSError:
            if dest.exists():
                continue  # taken meanwhile by another process
            raise
        return dest
    raise FileExistsError(f"{stale} holds too many copies of {run_id}: clean it up")


def stale_runs(results_dir: str | Path) -> list[Path]:
    """The runs moved aside in a store: the folders of ``results_dir/stale`` and of
    ``results_dir/*/stale`` (a store of stores, e.g. the chapters' ``measure-<hash>/``),
    sorted; symbolic links are not followed."""
    root = Path(results_dir)
    if not root.is_dir():
        return []
    bases = [root / STALE_DIR]
    bases += [d / STALE_DIR for d in sorted(root.iterdir())
              if d.name != STALE_DIR and d.is_dir() and not d.is_symlink()]
    out: list[Path] = []
    for b in bases:
        if b.is_dir() and not b.is_symlink():
            out += sorted(p for p in b.iterdir() if p.is_dir() and not p.is_symlink())
    return out


def moved_message(moved: Sequence[MovedRun]) -> str:
    """One line per moved run (id, reason, new folder), after a heading saying nothing was
    deleted; ``""`` when nothing moved."""
    if not moved:
        return ""
    head = f"moved {len(moved)} stored run(s) aside (kept, not deleted) before recomputing them:"
    return "\n".join([head, *(f"  {printable(str(m))}" for m in moved)])


def say_moved(moved: Sequence[MovedRun]) -> None:
    """Tell the user about runs moved aside: a :class:`MovedAsideWarning` (the CLI prints it
    as one ``flatbook: …`` line per batch; a notebook shows it under the cell)."""
    if moved:
        warnings.warn(moved_message(moved), MovedAsideWarning, stacklevel=3)


def _no_link(path: Path, what: str) -> None:
    if path.is_symlink():
        raise StoreFaultError(
            f"{path} ({what}) is a symbolic link: flatbook does not follow links out of the "
            f"result store — replace it by a real {'folder' if what.endswith('folder') else 'file'}"
            f" or remove it"
        )


def check_run_folder(results_dir: str | Path, run_id: str, *, files: bool = True) -> Path:
    """The run folder ``results_dir/<run_id>`` if the store is safe and usable for it, else
    :class:`StoreFaultError` naming the fault and the way out: the run folder, ``.locks`` or
    (``files``) a run file is a symbolic link; ``.locks`` is not a folder; a run file
    (``RUN_FILES``) exists but is not a regular file (e.g. a folder where ``results.json``
    should be). Cheap: call it before any training."""
    _check_run_id(run_id)
    root = Path(results_dir)
    rd, locks = root / run_id, root / ".locks"
    _no_link(rd, "run folder")
    _no_link(locks, "lock folder")
    if locks.exists() and not locks.is_dir():
        raise StoreFaultError(f"{locks} is a file, but the store keeps its run locks in a "
                              f"folder of that name: move the file away")
    if rd.exists() and not rd.is_dir():
        raise StoreFaultError(f"{rd} is a file where the run's folder should be: move it away")
    if files and rd.is_dir():
        for name in RUN_FILES:
            p = rd / name
            _no_link(p, "run file")
            if p.exists() and not p.is_file():
                raise StoreFaultError(f"{p} is not a regular file (a folder?): move it away "
                                      f"and run the same command again")
    return rd


# ------------------------------------------------------------------------------ shapes

_SCALAR = (int, float, type(None))


def _bad(path: Path, problem: str, way_out: str) -> DamagedFileError:
    return DamagedFileError(path, problem, way_out)


def check_records(records: Any, path: Path, way_out: str, field: str = "records") -> None:
    """``records`` must be a list of flat records ``{str: number or None}`` with an integral
    ``step`` (what ``show`` and ``plot`` read); :class:`DamagedFileError` naming ``path``."""
    if not isinstance(records, list):
        raise _bad(path, f"{field} is a {type(records).__name__}, not a list", way_out)
    for i, rec in enumerate(records):
        check_record(rec, path, way_out, f"{field}[{i}]")


def check_record(rec: Any, path: Path, way_out: str, field: str) -> None:
    """One record: ``{str: int | float | None}``, ``step`` (if present) an int ≥ 0."""
    if not isinstance(rec, Mapping):
        raise _bad(path, f"{field} is a {type(rec).__name__}, not a record", way_out)
    for k, v in rec.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, _SCALAR):
            raise _bad(path, f"{field}[{printable(repr(k))[:40]}] is a {type(v).__name__}, "
                             f"not a number", way_out)  # fmt: skip
    step = rec.get("step")
    integral = isinstance(step, int) or (isinstance(step, float) and step.is_integer())
    if step is not None and not (integral and step >= 0):
        raise _bad(path, f"{field}['step'] is {printable(repr(step))[:40]}, not a step", way_out)


def _optional(doc: Mapping[str, Any], key: str, types: tuple, path: Path, way_out: str) -> None:
    v = doc.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, types)):
        raise _bad(path, f"{key} is a {type(v).__name__} ({printable(repr(v))[:40]})", way_out)


def check_results_doc(doc: Mapping[str, Any], path: Path, way_out: str) -> None:
    """The fields of ``results.json`` that are printed or used have their types: ``final`` a
    record, ``records`` a list of records, step counts integers ≥ 0, ``error`` a string,
    ``numerics`` a flat dict; :class:`DamagedFileError` naming ``path`` otherwise."""
    for key in ("steps", "steps_done", "diverged_at", "target_step", "n_params"):
        _optional(doc, key, (int,), path, way_out)
        if isinstance(doc.get(key), int) and doc[key] < 0:
            raise _bad(path, f"{key} is negative", way_out)
    _optional(doc, "error", (str,), path, way_out)
    _optional(doc, "provenance", (dict,), path, way_out)
    if doc.get("final") is not None:
        check_record(doc["final"], path, way_out, "final")
    check_records(doc.get("records") or [], path, way_out)
    num = doc.get("numerics")
    if num is not None and (not isinstance(num, dict) or any(
            not isinstance(v, str | int | float | type(None)) for v in num.values())):
        raise _bad(path, "numerics is not a flat record", way_out)


# ------------------------------------------------------------------------------ printing

_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def printable(text: Any) -> str:
    """``str(text)`` with every control, format (bidi overrides, zero-width) and line/paragraph
    separator character replaced by ``?``: a stored string cannot move the cursor, clear the
    screen, start a new line or reorder what a terminal shows."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join("?" if unicodedata.category(c) in _BAD_CATEGORIES else c for c in s)


__all__ = [
    "REASONS",
    "RUN_FILES",
    "STALE_DIR",
    "MovedAsideWarning",
    "MovedRun",
    "StoreFaultError",
    "check_record",
    "check_records",
    "check_results_doc",
    "check_run_folder",
    "move_aside",
    "moved_message",
    "printable",
    "say_moved",
    "stale_runs",
]
