"""Atomic file writes, JSON with non-finite floats, provenance stamps (code version, packages).

Every result file is written to a temporary file in the destination folder, flushed and
fsync'ed, then renamed over the destination with ``os.replace`` (atomic on POSIX and Windows):
a reader sees the old file or the new one, never a half-written one.

JSON cannot represent NaN/±∞; :func:`to_jsonable` writes them as the strings ``"nan"``,
``"inf"``, ``"-inf"`` and :func:`from_jsonable` turns those strings back into floats.

Verified files (issue 16): a JSON document is *sealed* by :func:`seal` (its ``"sha256"`` key =
:func:`stable_hash` of the rest) and checked by :func:`read_sealed`; a checkpoint carries
``"sha256"`` = :func:`state_digest` of its content, checked after every load, and is loaded
with ``torch.load(weights_only=True)`` only. :func:`save_checkpoint` verifies the new file on
disk before it replaces the old one, and keeps the one before as ``<name>.prev.pt``. A damaged
file raises :class:`DamagedFileError` (names the file, what is wrong and the way out); a full
disk raises :class:`NoSpaceError` ("no space left"), the previous file left in place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
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
NON_NUMERIC_MODULES = frozenset({
    "__init__.py", "__main__.py", "_io.py", "book.py", "chain.py", "executors.py",
    "cli_show.py", "executor_cli.py", "executor_jobs.py", "executor_options.py",
    "executor_submit.py",
    "experiment.py", "locks.py", "plots.py", "plots_experiments.py", "plots_mechanism.py",
    "store.py", "tight.py", "traceability.py",
    "run_config.py", "run_folder.py", "run_inspect.py", "run_numerics.py", "run_results.py",
})
"""Top-level modules of ``flatbook`` that cannot change a run's numbers (command line, store
and lock bookkeeping, figures, the book's helpers and equality cases). Every *other* module
counts in :func:`code_hash`, so a new module of the measurement or training code is covered
without being listed."""


def numeric_modules() -> tuple[str, ...]:
    """File names of the modules whose source determines a run's numbers: every top-level
    ``flatbook/*.py`` but :data:`NON_NUMERIC_MODULES`, sorted (the ``analysis`` subpackage
    reads stored runs and never computes one)."""
    return tuple(sorted(p.name for p in PACKAGE_DIR.glob("*.py")
                        if p.name not in NON_NUMERIC_MODULES))


NUMERIC_MODULES = numeric_modules()

PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "tqdm")

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class StoreProblem(Exception):
    """Mixin of the result store's own errors (damaged file, full disk, locked run, …): they
    are not failures of the run and are never recorded as ``status="failed"``.
    ``status`` is what ``show`` / a sweep summary calls such a run."""

    status = "failed"


class DamagedFileError(StoreProblem, ValueError):
    """A stored file cannot be read or does not verify; the message names the file, what is
    wrong and the way out (one line)."""

    status = "damaged"

    def __init__(self, path: str | Path, problem: str, way_out: str) -> None:
        self.path, self.problem, self.way_out = Path(path), problem, way_out
        super().__init__(f"{path}: {problem}; {way_out}")


class NoSpaceError(StoreProblem, OSError):
    """No space left on the device (ENOSPC / EDQUOT) while writing a store file."""

    status = "interrupted"

    def __init__(self, path: str | Path, nbytes: int | None, kept: str) -> None:
        self.path = Path(path)
        size = f" ({nbytes / 1e6:.1f} MB)" if nbytes is not None else ""
        super().__init__(
            errno.ENOSPC,
            f"no space left on device writing {path}{size}; {kept} — free some space (or "
            f"choose another --results-dir) and run the same command again",
        )

    def __str__(self) -> str:
        return str(self.args[1])


class NotWritableError(StoreProblem, OSError):
    """The result store (or a run folder) cannot be written."""

    def __str__(self) -> str:
        return str(self.args[0])


NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _not_writable(path: Path, e: OSError, kept: str) -> NotWritableError:
    """A write refused by the file system (permissions, read-only) as a store problem."""
    return NotWritableError(
        f"cannot write {path} ({e.strerror or e}): the store is not writable; {kept} — fix "
        f"its permissions (or choose another --results-dir) and run the same command again"
    )


def _write_bytes(fh: IO[bytes], data: bytes | memoryview) -> None:
    """``fh.write(data)`` (one place, so that a test can inject a full disk)."""
    fh.write(data)


def check_writable(folder: str | Path, what: str = "results_dir") -> Path:
    """Create ``folder`` (and parents) and prove it writable by creating and removing a probe
    file; :class:`NotWritableError` naming ``what`` and the folder otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_path(folder / "write-probe")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NotWritableError(
            f"{what} {folder} is not writable ({type(e).__name__}: {e.strerror or e}); "
            f"choose another folder (--results-dir) or fix its permissions"
        ) from None
    return folder


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
    except BaseException as e:
        if os.path.exists(tmp):
            with contextlib.suppress(OSError):  # e.g. the folder became read-only
                os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, StoreProblem) and e.errno in NO_SPACE:
            kept = "the previous version is kept" if path.exists() else "nothing was written"
            raise NoSpaceError(path, None, kept) from None
        if isinstance(e, OSError) and not isinstance(e, StoreProblem) and e.errno in NO_WRITE:
            kept = "the previous version is kept" if path.exists() else "nothing was written"
            raise _not_writable(path, e, kept) from None
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
    return atomic_write(path, lambda fh: _write_bytes(fh, text))


MAX_JSON_BYTES = 128 * 2**20
"""Largest JSON file :func:`read_json` reads (a long run's ``results.json`` is a few MB)."""
MAX_JSON_DEPTH = 64
"""Deepest nesting of lists/objects :func:`read_json` accepts (store files nest ≤ 4 deep)."""
MAX_INT_DIGITS = 40
"""Longest integer literal :func:`read_json` accepts (seeds and step counts are < 2**64)."""


class JSONLimitError(ValueError):
    """A JSON file exceeds :func:`read_json`'s limits (size, nesting depth, integer digits)."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONLimitError(f"holds a {len(text)}-digit integer (at most {MAX_INT_DIGITS})")
    return int(text)


def _check_depth(obj: Any) -> None:
    """Iteratively (no recursion) refuse nesting deeper than :data:`MAX_JSON_DEPTH`."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, dict | list):
            if d > MAX_JSON_DEPTH:
                raise JSONLimitError(f"nests deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))


def loads_limited(text: str | bytes) -> Any:
    """``json.loads`` within :func:`read_json`'s limits (nesting depth, integer digits);
    :class:`JSONLimitError` (a ``ValueError``) or ``json.JSONDecodeError`` otherwise."""
    try:
        obj = json.loads(text, parse_int=_parse_int)
    except RecursionError:
        raise JSONLimitError(f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    _check_depth(obj)
    return obj


def read_json(path: str | Path) -> Any:
    """Read JSON written by :func:`write_json` (non-finite strings decoded), within limits:
    at most :data:`MAX_JSON_BYTES` bytes, :data:`MAX_JSON_DEPTH` levels of nesting and
    :data:`MAX_INT_DIGITS`-digit integers (:class:`JSONLimitError` otherwise), so that a
    crafted file cannot exhaust memory, the stack or the integer parser."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise JSONLimitError(f"is larger than {MAX_JSON_BYTES} bytes")
    return from_jsonable(loads_limited(data.decode("utf-8")))


def seal(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``doc`` with ``"sha256"`` = :func:`stable_hash` of the rest (verified by
    :func:`read_sealed`; an edit anywhere in the document breaks the seal)."""
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return {**body, "sha256": stable_hash(body)}


def read_sealed(path: str | Path, way_out: str, *,
                required: bool | Callable[[Mapping[str, Any]], bool] = True) -> dict[str, Any]:
    """Read a JSON object and verify its seal (:func:`seal`).

    ``required`` False (or a predicate of the document returning False) accepts a document
    without ``"sha256"`` (written before seals existed; the caller migrates it). Any damage —
    unreadable, not JSON (e.g. truncated), not an object, seal missing or not matching —
    raises :class:`DamagedFileError` with ``way_out``.
    """
    path = Path(path)
    try:
        doc = read_json(path)
    except JSONLimitError as e:
        raise DamagedFileError(path, f"{e} — not a file flatbook wrote", way_out) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        what = "is empty" if path.stat().st_size == 0 else f"is not valid JSON ({e})"
        raise DamagedFileError(path, f"{what} — truncated or overwritten", way_out) from None
    except OSError as e:
        raise DamagedFileError(path, f"cannot be read ({e.strerror or e})", way_out) from None
    if not isinstance(doc, dict):
        raise DamagedFileError(path, f"holds a JSON {type(doc).__name__}, not an object",
                               way_out)  # fmt: skip
    if "sha256" not in doc:
        if required(doc) if callable(required) else required:
            raise DamagedFileError(path, "has no checksum (sha256)", way_out)
        return doc
    body = {k: v for k, v in doc.items() if k != "sha256"}
    try:
        ok = stable_hash(body) == doc["sha256"]
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise DamagedFileError(
            path, "its content does not match its checksum (edited or corrupted)", way_out
        )
    return body


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical compact JSON of ``obj`` (hex)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def code_hash() -> str:
    """SHA-256 over the source of the modules that determine a run's numbers
    (:func:`numeric_modules`; a missing module counts as empty)."""
    h = hashlib.sha256()
    for name in numeric_modules():
        p = PACKAGE_DIR / name
        h.update(name.encode() + b"\0")
        if p.is_file():
            h.update(p.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


# ------------------------------------------------------------------------------ checkpoints


def state_digest(obj: Any) -> str:
    """SHA-256 over a checkpoint's content: tensors by dtype, shape and bytes; dicts by sorted
    keys; lists, numbers, strings, None by type and value (a digest of what was loaded, not of
    the file's bytes, so it survives re-serialisation and catches any changed value)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, k)
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(b"[" if isinstance(obj, list) else b"(")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    elif isinstance(obj, float):
        h.update(b"f" + float.hex(obj).encode())
    elif obj is None or isinstance(obj, bool | int | str | bytes):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def previous_checkpoint(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint before the current one."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def _reason(e: BaseException) -> str:
    """A short reason for a failed load, never repeating torch's ``weights_only=False``
    advice (loading a file that way can run arbitrary code)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "weights_only" in str(e) or "pickle" in text.lower() or not text:
        return type(e).__name__
    text = text.split(". ")[0].rstrip(".")
    return f"{type(e).__name__}: {text[:120]}"


RESTART_DEFAULT = "delete the checkpoint to start over"
"""The way out :func:`load_checkpoint` names when it has no better one (the result store
passes its own: ``--restart``)."""


def read_checkpoint(path: str | Path, way_out: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load one checkpoint file (``weights_only=True``) and verify its digest.

    Returns the state without ``"sha256"``. A file that does not load (truncated, empty,
    garbage, not a checkpoint) or whose digest does not match raises
    :class:`DamagedFileError`. A state without a digest (written before digests existed) is
    accepted as it loads.
    """
    import torch

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DamagedFileError(path, "is empty (0 bytes) — not a checkpoint", way_out)
        state = torch.load(path, map_location=map_location, weights_only=True)
    except DamagedFileError:
        raise
    except Exception as e:  # noqa: BLE001 - any load failure means the file is damaged
        raise DamagedFileError(
            path, f"cannot be read as a checkpoint ({_reason(e)}) — truncated or corrupted",
            way_out,
        ) from None  # fmt: skip
    if not isinstance(state, dict):
        raise DamagedFileError(path, "does not hold a checkpoint (not a dict)", way_out)
    digest = state.pop("sha256", None)
    if digest is not None and digest != state_digest(state):
        raise DamagedFileError(
            path, "its content does not match its checksum (edited or corrupted)", way_out
        )
    return state


def load_checkpoint(path: str | Path, map_location: Any = "cpu",
                    restart: str = RESTART_DEFAULT) -> dict[str, Any] | None:  # fmt: skip
    """The state of the newest good checkpoint at ``path``, or None if there is none.

    ``path`` missing but ``<name>.prev.pt`` present (e.g. a damaged file was moved aside): the
    previous checkpoint is loaded. ``path`` damaged: :class:`DamagedFileError` whose way out is
    to move it aside (then the previous one is used, if good) or ``restart``.
    """
    path = Path(path)
    prev = previous_checkpoint(path)
    if path.is_file():
        if prev.is_file():
            way = (f"move it aside (mv {path} {path}.damaged) and run the same command again to "
                   f"resume from the previous checkpoint {prev.name}, or {restart}")  # fmt: skip
        else:
            way = f"no earlier checkpoint is kept — {restart}"
        return read_checkpoint(path, way, map_location)
    if prev.is_file():
        return read_checkpoint(prev, f"no other checkpoint is kept — {restart}", map_location)
    return None


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` with its digest, verified before it replaces anything.

    The state is serialised in memory, written to a temporary file, fsync'ed, loaded back
    (``weights_only=True``) and its digest checked; only then the current ``path`` becomes
    ``<name>.prev.pt`` and the new file ``path``. A full disk raises :class:`NoSpaceError`
    with both older checkpoints untouched.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = dict(state)
    buf = io.BytesIO()
    torch.save({**body, "sha256": state_digest(body)}, buf)
    data = buf.getbuffer()
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as fh:
            _write_bytes(fh, data)
            fh.flush()
            os.fsync(fh.fileno())
        read_checkpoint(tmp, "the new checkpoint did not verify after writing")
        if path.is_file():
            os.replace(path, previous_checkpoint(path))
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            with contextlib.suppress(OSError):  # e.g. the folder became read-only
                os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            kept = ("the previous checkpoint is kept unchanged" if path.is_file()
                    else "no checkpoint was written")  # fmt: skip
            raise NoSpaceError(path, len(data), kept) from None
        if isinstance(e, OSError) and not isinstance(e, StoreProblem) and e.errno in NO_WRITE:
            raise _not_writable(path, e, "the previous checkpoint is kept") from None
        raise
    return path


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
    "DamagedFileError",
    "JSONLimitError",
    "NoSpaceError",
    "NotWritableError",
    "StoreProblem",
    "atomic_write",
    "check_writable",
    "load_checkpoint",
    "loads_limited",
    "previous_checkpoint",
    "read_checkpoint",
    "read_sealed",
    "save_checkpoint",
    "seal",
    "state_digest",
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
