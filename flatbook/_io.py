"""Atomic file writes, JSON with non-finite floats, provenance stamps (code version, packages).

Every result file is written to a temporary file in the destination folder, flushed and
fsync'ed, then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows):
a reader sees the old file or the new one, never a half-written one.

JSON cannot represent NaN/±∞; :func:`to_jsonable` writes them as the strings ``"nan"``,
``"inf"``, ``"-inf"`` and :func:`from_jsonable` turns those strings back into floats.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

# modules whose source determines the numbers of a run (the "code hash", see code_hash())
NUMERIC_MODULES = (
    "_functional.py",
    "losses.py",
    "models.py",
    "data.py",
    "train.py",
    "curvature.py",
    "layers.py",
    "geometry.py",
    "bounds.py",
    "report.py",
    "probe.py",
)

PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "tqdm")

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary name beside ``path`` (same folder, so ``os.replace`` is atomic)."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temp file, which is then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as fh:  # created with the usual umask permissions
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def to_jsonable(obj: Any) -> Any:
    """Recursively convert to JSON-safe values (tuples → lists, numpy/torch scalars → Python,
    non-finite floats → ``"nan"``/``"inf"``/``"-inf"``)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy / torch scalar
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if hasattr(obj, "tolist"):
        return to_jsonable(obj.tolist())
    raise TypeError(f"cannot store {type(obj).__name__} in JSON: {obj!r}")


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable` for the non-finite float strings."""
    if isinstance(obj, dict):
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    if isinstance(obj, str) and obj in _NONFINITE:
        return _NONFINITE[obj]
    return obj


def dumps(obj: Any) -> str:
    """Canonical JSON text (sorted keys, 1-space indent, strict: no bare NaN)."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=1, allow_nan=False) + "\n"


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as canonical JSON."""
    text = dumps(obj).encode()
    return atomic_write(path, lambda fh: fh.write(text))


def read_json(path: str | Path) -> Any:
    """Read JSON written by :func:`write_json` (non-finite strings decoded)."""
    with open(path, encoding="utf-8") as fh:
        return from_jsonable(json.load(fh))


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical compact JSON of ``obj`` (hex)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def code_hash() -> str:
    """SHA-256 over the source of the modules that determine a run's numbers
    (``NUMERIC_MODULES``; a missing module counts as empty)."""
    h = hashlib.sha256()
    for name in NUMERIC_MODULES:
        p = PACKAGE_DIR / name
        h.update(name.encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def git_info() -> dict[str, Any]:
    """``{"commit": hash or None, "dirty": bool or None}`` of the source checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        status = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no",
             "--", "flatbook"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
        return {"commit": out or None, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that affect numbers."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict[str, Any]:
    """Code version and environment of a run: flatbook version, code hash, git commit,
    package versions, Python, platform, and the creation time (UTC, ISO 8601)."""
    from flatbook import __version__

    return {
        "flatbook": __version__,
        "code_hash": code_hash(),
        "git": git_info(),
        "packages": package_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


__all__ = [
    "atomic_write",
    "code_hash",
    "dumps",
    "from_jsonable",
    "git_info",
    "package_versions",
    "provenance",
    "read_json",
    "stable_hash",
    "to_jsonable",
    "write_json",
]
