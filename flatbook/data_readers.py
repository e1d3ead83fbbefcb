"""Readers of the data sets' files into numpy arrays: IDX (MNIST, Fashion-MNIST), the pickled
CIFAR-10 batches (only numpy arrays are unpickled), MNIST-1D generated offline, and
scikit-learn's digits. The files come from :mod:`flatbook.data_files`; :func:`flatbook.data.load`
turns the arrays into a :class:`flatbook.data.Dataset`."""

from __future__ import annotations

import functools
import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "digits_arrays",
    "mnist1d_arrays",
    "read_cifar10",
    "read_distribution",
    "read_idx",
]

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format; gzip if the name ends in ``.gz``).

    Layout: 2 zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each size as a big-endian
    uint32, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    dt, ndim = _IDX_DTYPES[raw[2]], raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    start = 4 + 4 * ndim
    expect = int(np.prod(shape)) * dt.itemsize
    if len(raw) - start != expect:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expect} bytes), file has "
            f"{len(raw) - start} bytes of data (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=dt, offset=start).reshape(shape).astype(dt.newbyteorder("="))


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: only builtins containers and numpy arrays may be built."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # protocol-2 pickles of bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        """The global ``module.name`` a pickle refers to, if it is in :attr:`_ALLOWED` (numpy
        array reconstruction); else :class:`pickle.UnpicklingError` — a CIFAR batch holds only
        arrays, so anything else is refused rather than executed."""
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"CIFAR batch refers to {module}.{name}: refused")


def read_cifar10(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read ``cifar-10-python.tar.gz``: ``(X_train, y_train, X_test, y_test)``.

    X: uint8 [n, 3, 32, 32] (train n = 50 000 from ``data_batch_1..5``, test 10 000 from
    ``test_batch``); y: int64 [n]. Each batch is a pickled dict with ``b"data"`` (uint8
    [m, 3072], channel-major rows) and ``b"labels"``; only numpy arrays are unpickled.
    """

    def batch(tar: tarfile.TarFile, member: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            fh = tar.extractfile(f"cifar-10-batches-py/{member}")
        except KeyError:
            raise ValueError(f"{path} lacks cifar-10-batches-py/{member}") from None
        if fh is None:
            raise ValueError(f"{path}: cifar-10-batches-py/{member} is not a file")
        d = _NumpyOnlyUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
            raise ValueError(f"{path}: {member} has data {data.shape}, labels {labels.shape}")
        return data.reshape(-1, 3, 32, 32), labels

    with tarfile.open(path, "r:gz") as tar:
        parts = [batch(tar, f"data_batch_{i}") for i in range(1, 6)]
        X_test, y_test = batch(tar, "test_batch")
    X_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return X_train, y_train, X_test, y_test


def read_distribution(key: str, paths: dict[str, Path]) -> tuple[np.ndarray, ...]:
    """The official split of full-scale data set ``key`` from its files ``paths`` ({file name:
    path}, :func:`flatbook.data_files.fetch`): ``(X_train, y_train, X_test, y_test)``, X uint8
    [n, C, H, W] (MNIST/Fashion [n, 1, 28, 28], CIFAR-10 [n, 3, 32, 32]), y int64 [n]."""
    if key == "cifar10":
        return read_cifar10(paths["cifar-10-python.tar.gz"])
    Xtr = read_idx(paths["train-images-idx3-ubyte.gz"])
    ytr = read_idx(paths["train-labels-idx1-ubyte.gz"])
    Xte = read_idx(paths["t10k-images-idx3-ubyte.gz"])
    yte = read_idx(paths["t10k-labels-idx1-ubyte.gz"])
    for X, y, part in ((Xtr, ytr, "train"), (Xte, yte, "t10k")):
        if X.ndim != 3 or y.ndim != 1 or X.shape[0] != y.shape[0]:
            raise ValueError(f"{key} {part}: images {X.shape} and labels {y.shape} disagree")
    return Xtr[:, None], ytr.astype(np.int64), Xte[:, None], yte.astype(np.int64)


@functools.lru_cache(maxsize=1)
def mnist1d_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D (Greydanus 2020) generated offline: ``mnist1d.data.make_dataset`` with its
    default arguments (5000 sequences of length 40, seed 42, train split 0.8) — never the
    downloading ``get_dataset``. Returns (X_train [4000, 1, 1, 40], y_train, X_test
    [1000, 1, 1, 40], y_test), read-only copies cached in memory."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:  # pragma: no cover - pinned in requirements.txt
        raise ImportError("dataset 'mnist1d' needs the package mnist1d (pinned in "
                          "requirements.txt: pip install -r requirements.txt)") from e
    d = make_dataset(get_dataset_args())
    out = (np.asarray(d["x"], dtype=np.float64)[:, None, None, :],
           np.asarray(d["y"], dtype=np.int64),
           np.asarray(d["x_test"], dtype=np.float64)[:, None, None, :],
           np.asarray(d["y_test"], dtype=np.int64))
    for a in out:
        a.setflags(write=False)
    return out




def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (ships with the package, offline): X float64 [1797, 1, 8, 8] with
    pixels scaled to [0, 1] (/16), y int64 labels 0..9 [1797]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float64)[:, None] / 16.0, d.target.astype(np.int64)
