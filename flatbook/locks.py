"""One process trains a run id at a time: an exclusive ``flock`` held by the run, released by
the kernel when the process ends (even by kill −9).

Two locks are held (:func:`run_lock`): the lock file ``results_dir/.locks/<run_id>.lock``,
which names the holder, and the run folder itself (or, where the file system cannot lock a
folder, e.g. NFS, its :data:`FOLDER_LOCK` file), so removing ``.locks`` mid-run does not let a
second process in. :func:`lock_holder` reports either. Symbolic links for the run folder,
``.locks`` or the lock file are refused (:class:`flatbook.store.StoreFaultError`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any

from flatbook import store as _store
from flatbook._io import StoreProblem

try:  # POSIX: advisory locks released by the kernel when the holder dies
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking
    fcntl = None  # type: ignore[assignment]


class RunLockedError(StoreProblem, RuntimeError):
    """Another live process is training this run id."""

    status = "running"


def lock_path(results_dir: str | Path, run_id: str) -> Path:
    """The lock file of a run: ``results_dir/.locks/<run_id>.lock``."""
    return Path(results_dir) / ".locks" / f"{run_id}.lock"


def _try_flock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; False if another holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _open_run_folder(results_dir: str | Path, run_id: str) -> int | None:
    """A read-only descriptor of the run folder itself (never through a symbolic link), or
    None if there is no such folder."""
    try:
        return os.open(Path(results_dir) / run_id,
                       os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None


def lock_holder(results_dir: str | Path, run_id: str) -> str | None:
    """Who holds the run's lock (``"pid 123 on host since …"``), or None if nobody does. A run
    holds two locks: its lock file ``.locks/<run_id>.lock`` and its own folder; either held
    counts (so deleting ``.locks`` does not hide a running run)."""
    if fcntl is None:
        return None
    p = lock_path(results_dir, run_id)
    in_folder = Path(results_dir) / run_id / FOLDER_LOCK
    fds = (_open_lock_file(p), _open_run_folder(results_dir, run_id), _open_lock_file(in_folder))
    held = False
    for fd in fds:
        if fd is None:
            continue
        try:
            if not _try_flock(fd):
                held = True
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:  # this file system cannot flock a folder: FOLDER_LOCK is used
            pass
        finally:
            os.close(fd)
    return _holder_text(p) if held else None


def _open_lock_file(p: Path) -> int | None:
    if p.is_symlink() or p.parent.is_symlink() or not p.is_file():
        return None
    try:
        return os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None


def _holder_text(p: Path) -> str:
    try:
        if not p.is_symlink() and p.is_file():
            return p.read_text(errors="replace").strip()[:200] or "another process"
    except OSError:
        pass
    return "another process"


FOLDER_LOCK = ".run.lock"
"""Lock file inside the run folder, used only where the file system cannot ``flock`` a folder
(e.g. NFS, where ``flock`` is emulated by byte-range locks that need a writable file)."""

LOCK_TRIES = 20
"""Attempts (0.1 s apart) to take a run's lock before :class:`RunLockedError`."""


def _flock_or_raise(fd: int, run_id: str, p: Path) -> None:
    for attempt in range(LOCK_TRIES):  # a moment's grace (e.g. `show` probing the lock)
        if _try_flock(fd):
            return
        if attempt < LOCK_TRIES - 1:
            time.sleep(0.1)
    raise RunLockedError(
        f"run {run_id} is being trained by {_holder_text(p)} (lock {p}); wait for it to finish "
        f"or stop that process (a stopped or killed run releases the lock; the same "
        f"command then resumes it)"
    )


@contextlib.contextmanager
def run_lock(results_dir: str | Path, run_id: str) -> Any:
    """Hold the exclusive lock of ``run_id`` for the body (``flock``; the kernel releases it
    when the process ends, even by kill −9). Another holder: :class:`RunLockedError`.

    Two locks are held: ``results_dir/.locks/<run_id>.lock`` (it names the holder) and the
    run folder itself (created if missing; where the file system cannot lock a folder, its
    :data:`FOLDER_LOCK` file), so removing ``.locks`` mid-run does not let a second process
    in. Symbolic links (run folder, ``.locks``, the lock file) are refused
    (:class:`flatbook.store.StoreFaultError`)."""
    if fcntl is None:  # pragma: no cover
        yield None
        return
    _store.check_run_folder(results_dir, run_id, files=False)
    p = lock_path(results_dir, run_id)
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(p, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as e:
        raise _store.StoreFaultError(f"cannot open the lock file {p} ({e.strerror or e}; a "
                                     f"symbolic link?): remove it and run the same command "
                                     f"again") from None
    dfd = None
    try:
        _flock_or_raise(fd, run_id, p)
        (Path(results_dir) / run_id).mkdir(exist_ok=True)
        dfd = _open_run_folder(results_dir, run_id)
        if dfd is None:
            raise _store.StoreFaultError(f"{Path(results_dir) / run_id} cannot be opened as a "
                                         f"folder of the store")
        try:
            _flock_or_raise(dfd, run_id, p)
        except OSError:  # no flock on a folder here (NFS): lock a file inside it instead
            os.close(dfd)
            dfd = None
            dfd = os.open(Path(results_dir) / run_id / FOLDER_LOCK,
                          os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            _flock_or_raise(dfd, run_id, p)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {platform.node()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())  # fmt: skip
        yield p
    finally:
        if dfd is not None:
            os.close(dfd)
        os.close(fd)  # releases the lock


__all__ = ["FOLDER_LOCK", "LOCK_TRIES", "RunLockedError", "lock_holder", "lock_path",
           "run_lock"]
