"""Data sets: scikit-learn's digits (offline default) and full-scale MNIST, Fashion-MNIST and
CIFAR-10 read from their standard distribution files.

:func:`load` returns a :class:`Dataset` with a seeded train/test split, optional class subset
(the paper used 2 CIFAR-10 classes), standardisation fitted on the training set only, and
one-hot targets for the squared loss (paper.md §0: ℓ = ½‖f − y‖², y one-hot).

Full-scale files live in ``<data_dir>/<name>/`` (``data_dir`` defaults to ``$FLATBOOK_DATA``,
else ``data/`` in the checkout, else ``~/.cache/flatbook/data``):

=================  ==========================================================================
``mnist``          ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
                   ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` (IDX, gzip)
``fashion_mnist``  the same four file names (Zalando's distribution)
``cifar10``        ``cifar-10-python.tar.gz`` (the "python version": pickled batches)
=================  ==========================================================================

Missing files are downloaded when online (``urllib``; streamed to a temporary file, checked
against the published MD5, then renamed into place — never half-written); offline, the error
names the files to place and where. No torchvision.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flatbook._io import temp_path

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def as_dtype(dtype: str | torch.dtype, name: str = "dtype") -> torch.dtype:
    """``"float32"``/``"float64"`` (or the torch dtype) → torch dtype; ValueError otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in DTYPES:
        return DTYPES[dtype.replace("torch.", "")]
    raise ValueError(f"unknown {name} {dtype!r}; allowed: {sorted(DTYPES)}")


# ------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class RemoteFile:
    """One distribution file: its name, download mirrors and published checksum."""

    name: str
    urls: tuple[str, ...]
    md5: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A data set: files in ``<data_dir>/<folder>/``, image shape (C, H, W), class names."""

    folder: str
    files: tuple[RemoteFile, ...]
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    homepage: str


def _idx_files(mirrors: Sequence[str], md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(name, tuple(m.rstrip("/") + "/" + name for m in mirrors), md5=md5)
        for name, md5 in md5s.items()
    )


DIGITS_CLASSES = tuple(str(i) for i in range(10))

DATASETS: dict[str, DatasetSpec | None] = {
    "digits": None,  # scikit-learn, ships with the package (1797 × 8×8, 10 classes)
    "mnist1d": None,  # generated offline by mnist1d.data.make_dataset (4000 + 1000 × 40)
    "mnist": DatasetSpec(
        "mnist",
        _idx_files(
            [
                "https://ossci-datasets.s3.amazonaws.com/mnist",
                "http://yann.lecun.com/exdb/mnist",
            ],
            {
                "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ),
        (1, 28, 28),
        DIGITS_CLASSES,
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        _idx_files(
            [
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
            ],
            {
                "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
            },
        ),
        (1, 28, 28),
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),  # fmt: skip
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar10": DatasetSpec(
        "cifar10",
        (
            RemoteFile(
                "cifar-10-python.tar.gz",
                ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                md5="c58f30108f718f92721af3b95e74349a",
            ),
        ),
        (3, 32, 32),
        (
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),  # fmt: skip
        "https://www.cs.toronto.edu/~kriz/cifar.html",
    ),
}
"""Known data sets; ``None`` marks the offline ones (scikit-learn digits, MNIST-1D)."""

ALIASES = {"fashion": "fashion_mnist", "fashionmnist": "fashion_mnist", "cifar": "cifar10"}

STANDARDIZE = ("channel", "feature", "none")


def canonical_name(name: str) -> str:
    """Registry name of a data set (aliases and ``-`` resolved); ValueError listing names."""
    if not isinstance(name, str):
        raise TypeError(f"dataset must be a string; got {type(name).__name__}")
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key.replace("_", ""), ALIASES.get(key, key))
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {sorted(DATASETS)}")
    return key


def default_data_dir() -> Path:
    """``$FLATBOOK_DATA`` if set; else ``data/`` of the source checkout; else
    ``~/.cache/flatbook/data``."""
    env = os.environ.get("FLATBOOK_DATA")
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file():
        return root / "data"
    return Path.home() / ".cache" / "flatbook" / "data"


# ------------------------------------------------------------------------------ download


class DataUnavailableError(FileNotFoundError):
    """Distribution files are missing and could not be downloaded (e.g. offline)."""


class ChecksumError(ValueError):
    """A file's checksum differs from the published one."""


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest (``"md5"`` or ``"sha256"``) of a file, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _expected(f: RemoteFile) -> tuple[str, str] | None:
    if f.sha256:
        return "sha256", f.sha256.lower()
    if f.md5:
        return "md5", f.md5.lower()
    return None


def download_file(
    urls: str | Sequence[str],
    dest: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> Path:
    """Download the first reachable URL to ``dest`` atomically, verifying the checksum.

    The body is streamed to a temporary file in ``dest``'s folder while its digest is computed;
    only a verified file is renamed (``os.replace``) to ``dest``. Mirrors are tried in order.

    Raises:
        ChecksumError: some mirror served a file with the wrong checksum (and none a good one).
        DataUnavailableError: no mirror could be reached.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algo, want = ("sha256", sha256.lower()) if sha256 else ("md5", (md5 or "").lower())
    errors: list[str] = []
    bad_checksum: list[str] = []
    for url in urls:
        tmp = temp_path(dest)
        try:
            h = hashlib.new(algo)
            with open(tmp, "xb") as out, urllib.request.urlopen(url, timeout=timeout) as r:
                total = int(r.headers.get("Content-Length") or 0) or None
                bar = _bar(total, dest.name, progress)
                while chunk := r.read(1 << 20):
                    out.write(chunk)
                    h.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                if bar is not None:
                    bar.close()
                out.flush()
                os.fsync(out.fileno())
            got = h.hexdigest()
            if want and got != want:
                bad_checksum.append(f"{url}: expected {algo} {want}, got {got}")
                continue
            os.replace(tmp, dest)
            return dest
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {getattr(e, 'reason', e)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if bad_checksum:
        raise ChecksumError(
            f"checksum mismatch for {dest.name} (file not saved): " + "; ".join(bad_checksum)
        )
    raise DataUnavailableError(f"could not download {dest.name}: " + "; ".join(errors))


def _bar(total: int | None, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # text bar: tqdm.auto warns (IProgress) in kernels without ipywidgets

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def fetch(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    verify: bool = True,
    mirror: str | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict[str, Path]:
    """Make sure the distribution files of data set ``name`` are in ``<data_dir>/<name>/``.

    Args:
        download: fetch missing files (else only check they are there). Setting the
            environment variable ``FLATBOOK_OFFLINE=1`` turns downloads off everywhere.
        verify: check present files against the published checksum (ChecksumError if not).
            Setting ``FLATBOOK_TRUST_DATA=1`` skips this check for files already present (your
            own re-packed or reduced files, synthetic files in tests); downloads are always
            verified.
        mirror: base URL to fetch from instead of the official mirrors (``mirror/<file>``).

    Returns:
        ``{file name: path}``.

    Raises:
        DataUnavailableError: files missing and not downloadable; the message lists the files,
            the folder to place them in and where they are published.
    """
    key = canonical_name(name)
    spec = DATASETS[key]
    if spec is None:
        raise ValueError(f"dataset {key!r} ships with scikit-learn; nothing to fetch")
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = folder.expanduser() / spec.folder
    paths: dict[str, Path] = {}
    missing: list[RemoteFile] = []
    for f in spec.files:
        p = folder / f.name
        paths[f.name] = p
        if p.is_file():
            exp = _expected(f)
            trusted = os.environ.get("FLATBOOK_TRUST_DATA", "").strip() not in ("", "0")
            if verify and not trusted and exp is not None and file_digest(p, exp[0]) != exp[1]:
                raise ChecksumError(
                    f"{p} does not match the published {exp[0]} {exp[1]}: delete it (it will be "
                    f"downloaded again), or pass verify=False / set FLATBOOK_TRUST_DATA=1 for a "
                    f"file you trust"
                )
        else:
            missing.append(f)
    if not missing:
        return paths
    reason = "download=False"
    if download and os.environ.get("FLATBOOK_OFFLINE", "").strip() not in ("", "0"):
        download, reason = False, "offline mode ($FLATBOOK_OFFLINE is set)"
    if download:
        try:
            for f in missing:
                urls = (mirror.rstrip("/") + "/" + f.name,) if mirror else f.urls
                download_file(
                    urls, folder / f.name, md5=f.md5, sha256=f.sha256, timeout=timeout,
                    progress=progress,
                )  # fmt: skip
            return paths
        except DataUnavailableError as e:
            reason = f"download failed ({e})"
            missing = [f for f in missing if not (folder / f.name).is_file()]
    listing = ", ".join(f.name for f in missing)
    raise DataUnavailableError(
        f"dataset {key!r}: missing {listing} in {folder} — {reason}. Offline? Place the files "
        f"there (from {spec.homepage}; e.g. {missing[0].urls[0]}), or set $FLATBOOK_DATA / "
        f"data_dir= to the folder that holds '{spec.folder}/'."
    )


# ------------------------------------------------------------------------------ readers

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


def _read_full(key: str, paths: dict[str, Path]) -> tuple[np.ndarray, ...]:
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


# ------------------------------------------------------------------------------ Dataset


@dataclass
class Dataset:
    """A classification data set ready for training.

    Attributes:
        X_train, X_test: inputs, [n, C, H, W] (or [n, d] with ``flatten=True``), standardised.
        Y_train, Y_test: targets — one-hot float [n, k] (squared loss) or int64 labels [n].
        labels_train, labels_test: int64 class indices 0..k−1 [n] (index into ``classes``).
        classes: original labels of the kept classes, in index order.
        class_names: their names.
        input_shape: shape of one input (without the batch axis).
        mean, std: the standardisation fitted on the training set (broadcastable to X).
    """

    name: str
    X_train: Tensor
    Y_train: Tensor
    labels_train: Tensor
    X_test: Tensor
    Y_test: Tensor
    labels_test: Tensor
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]
    mean: Tensor
    std: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        """Number k of classes (output width)."""
        return len(self.classes)

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.X_test.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train {tuple(self.X_train.shape)}, test "
            f"{tuple(self.X_test.shape)}, classes {list(self.classes)}, {self.X_train.dtype})"
        )


def _check_classes(classes: Sequence[int] | int | None, n_all: int) -> tuple[int, ...]:
    if classes is None:
        return tuple(range(n_all))
    if isinstance(classes, int | np.integer) and not isinstance(classes, bool):
        if not 2 <= classes <= n_all:
            raise ValueError(f"classes={classes} (a count) must be in 2..{n_all}")
        return tuple(range(int(classes)))
    try:
        out = tuple(int(c) for c in classes)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(
            f"classes must be None, a count, or a list of labels in 0..{n_all - 1}; got {classes!r}"
        ) from None
    if any(int(c) != c for c in classes):  # type: ignore[union-attr]
        raise ValueError(f"classes must be integer labels in 0..{n_all - 1}; got {classes!r}")
    if len(out) < 2:
        raise ValueError(f"classes must name ≥ 2 labels; got {list(out)}")
    if len(set(out)) != len(out):
        raise ValueError(f"classes has duplicates: {list(out)}")
    bad = [c for c in out if not 0 <= c < n_all]
    if bad:
        raise ValueError(f"classes {bad} out of range; allowed labels: 0..{n_all - 1}")
    return out


def _subsample(n_have: int, n_want: int | None, rng: np.random.Generator, what: str) -> np.ndarray:
    if n_want is None:
        return np.arange(n_have)
    if int(n_want) != n_want or n_want < 1:
        raise ValueError(f"{what} must be a positive integer or None; got {n_want!r}")
    if n_want > n_have:
        raise ValueError(f"{what}={n_want} exceeds the {n_have} samples available")
    return np.sort(rng.permutation(n_have)[: int(n_want)])


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


def load(
    name: str = "digits",
    *,
    classes: Sequence[int] | int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    standardize: str | bool = "channel",
    one_hot: bool = True,
    flatten: bool = False,
    dtype: str | torch.dtype = torch.float32,
    data_dir: str | Path | None = None,
    download: bool = True,
    verify: bool = True,
) -> Dataset:
    """Load a data set as tensors.

    Pixels are scaled to [0, 1] (digits: /16, others: /255), then standardised with statistics
    of the training split only: ``"channel"`` — x ← (x − μ_c)/σ_c per channel (default),
    ``"feature"`` — per input coordinate (σ = 0 coordinates, e.g. digits' blank corners, are
    left unscaled), ``"none"``.

    Args:
        name: ``"digits"`` (offline, default), ``"mnist1d"`` (generated offline), ``"mnist"``,
            ``"fashion_mnist"``, ``"cifar10"``.
        classes: keep only these original labels (re-indexed 0..k−1 in the given order), or a
            count c meaning labels 0..c−1; None keeps all.
        n_train, n_test: sizes after the class filter (a seeded random subset); None keeps all.
        test_fraction: digits only — share of samples held out (stratified split by ``seed``).
            MNIST/Fashion/CIFAR use their official train/test split.
        seed: split / subsampling seed (numpy ``default_rng``).
        one_hot: targets Y as one-hot floats [n, k] (squared loss) or int64 labels [n].
        flatten: return inputs as [n, d] instead of [n, C, H, W].
        dtype: ``"float32"`` or ``"float64"``.
        data_dir, download, verify: see :func:`fetch` (full-scale data sets only).
    """
    key = canonical_name(name)
    dt = as_dtype(dtype)
    if standardize is True:
        standardize = "channel"
    elif standardize is False:
        standardize = "none"
    if standardize not in STANDARDIZE:
        raise ValueError(f"unknown standardize {standardize!r}; allowed: {list(STANDARDIZE)}")
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    rng = np.random.default_rng(int(seed))
    spec = DATASETS[key]
    if key == "mnist1d":
        Xtr, ytr, Xte, yte = mnist1d_arrays()
        keep = _check_classes(classes, 10)
        mtr, mte = np.isin(ytr, keep), np.isin(yte, keep)
        Xtr, ytr, Xte, yte = Xtr[mtr], ytr[mtr], Xte[mte], yte[mte]
        class_names, input_shape = DIGITS_CLASSES, (1, 1, 40)
    elif spec is None:
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction!r}")
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        X_all = d.images.astype(np.float64)[:, None] / 16.0  # [1797, 1, 8, 8]
        y_all = d.target.astype(np.int64)
        keep = _check_classes(classes, 10)
        mask = np.isin(y_all, keep)
        X_all, y_all = X_all[mask], y_all[mask]
        Xtr, Xte, ytr, yte = train_test_split(
            X_all, y_all, test_size=float(test_fraction), random_state=int(seed), stratify=y_all
        )
        class_names, input_shape = DIGITS_CLASSES, (1, 8, 8)
    else:
        keep = _check_classes(classes, len(spec.class_names))
        paths = fetch(key, data_dir, download=download, verify=verify)
        Xtr, ytr, Xte, yte = _read_full(key, paths)
        if tuple(Xtr.shape[1:]) != spec.input_shape or tuple(Xte.shape[1:]) != spec.input_shape:
            raise ValueError(f"{key}: images {Xtr.shape[1:]}, expected {spec.input_shape}")
        mtr, mte = np.isin(ytr, keep), np.isin(yte, keep)
        Xtr, ytr, Xte, yte = Xtr[mtr], ytr[mtr], Xte[mte], yte[mte]
        Xtr, Xte = Xtr.astype(np.float64) / 255.0, Xte.astype(np.float64) / 255.0
        class_names, input_shape = spec.class_names, spec.input_shape
    itr = _subsample(len(ytr), n_train, rng, "n_train")
    ite = _subsample(len(yte), n_test, rng, "n_test")
    Xtr, ytr, Xte, yte = Xtr[itr], ytr[itr], Xte[ite], yte[ite]
    if len(ytr) == 0 or len(yte) == 0:
        raise ValueError(f"{key} with classes {list(keep)}: empty train or test split")
    # standardise with training statistics only
    if standardize == "channel":
        mean = Xtr.mean(axis=(0, 2, 3), keepdims=True)[0]
        std = Xtr.std(axis=(0, 2, 3), keepdims=True)[0]
    elif standardize == "feature":
        mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    else:
        mean, std = np.zeros((input_shape[0], 1, 1)), np.ones((input_shape[0], 1, 1))
    std = np.where(std > 0, std, 1.0)
    Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    remap = np.full(max(max(keep), int(ytr.max()), int(yte.max())) + 1, -1, dtype=np.int64)
    remap[list(keep)] = np.arange(len(keep))
    ltr, lte = torch.from_numpy(remap[ytr]), torch.from_numpy(remap[yte])
    k = len(keep)

    def targets(lab: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(lab, k).to(dt) if one_hot else lab.clone()

    def inputs(X: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(X)).to(dt)
        return t.reshape(t.shape[0], -1) if flatten else t

    def stat(a: np.ndarray) -> Tensor:
        a = np.broadcast_to(a, input_shape).reshape(-1) if flatten else np.asarray(a)
        return torch.from_numpy(np.array(a)).to(dt)

    return Dataset(
        name=key,
        X_train=inputs(Xtr),
        Y_train=targets(ltr),
        labels_train=ltr,
        X_test=inputs(Xte),
        Y_test=targets(lte),
        labels_test=lte,
        classes=tuple(int(c) for c in keep),
        class_names=tuple(class_names[c] for c in keep),
        input_shape=(int(np.prod(input_shape)),) if flatten else tuple(input_shape),
        mean=stat(mean),
        std=stat(std),
        info={"standardize": standardize, "seed": int(seed), "one_hot": bool(one_hot)},
    )


__all__ = [
    "DATASETS",
    "ChecksumError",
    "DataUnavailableError",
    "Dataset",
    "as_dtype",
    "default_data_dir",
    "download_file",
    "fetch",
    "load",
    "read_cifar10",
    "read_idx",
]
