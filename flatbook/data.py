"""Data sets as tensors: scikit-learn's digits (offline default), MNIST-1D (generated offline)
and full-scale MNIST, Fashion-MNIST and CIFAR-10 read from their standard distribution files.

:func:`load` returns a :class:`Dataset` with a seeded train/test split, optional class subset
(the paper used 2 CIFAR-10 classes), standardisation fitted on the training set only, and
one-hot targets for the squared loss (paper.md §0: ℓ = ½‖f − y‖², y one-hot). Its options
form a :class:`LoadOptions` record (``load(name, options=LoadOptions(...))``), or are given as
keywords (``load("digits", n_train=200, seed=0)``).

Where the files come from (registry, download, checksums, ``$FLATBOOK_DATA``) is
:mod:`flatbook.data_files`; how they are read is :mod:`flatbook.data_readers`. Their public
names stay importable from here (``data.fetch``, ``data.read_idx``, ``data.DATASETS``, …).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from flatbook._validate import (
    check_choice,
    check_classes,
    check_fraction,
    check_positive_int,
    check_seed,
)
from flatbook.data_files import ALIASES as ALIASES
from flatbook.data_files import DATASETS as DATASETS
from flatbook.data_files import DIGITS_CLASSES as DIGITS_CLASSES
from flatbook.data_files import ChecksumError as ChecksumError
from flatbook.data_files import DatasetSpec as DatasetSpec
from flatbook.data_files import DataUnavailableError as DataUnavailableError
from flatbook.data_files import RemoteFile as RemoteFile
from flatbook.data_files import canonical_name as canonical_name
from flatbook.data_files import default_data_dir as default_data_dir
from flatbook.data_files import download_file as download_file
from flatbook.data_files import fetch as fetch
from flatbook.data_files import file_digest as file_digest
from flatbook.data_readers import digits_arrays, read_distribution
from flatbook.data_readers import mnist1d_arrays as mnist1d_arrays
from flatbook.data_readers import read_cifar10 as read_cifar10
from flatbook.data_readers import read_idx as read_idx

__all__ = [
    "ALIASES",
    "DATASETS",
    "DIGITS_CLASSES",
    "DTYPES",
    "STANDARDIZE",
    "ChecksumError",
    "DataUnavailableError",
    "Dataset",
    "DatasetSpec",
    "LoadOptions",
    "RemoteFile",
    "as_dtype",
    "canonical_name",
    "default_data_dir",
    "download_file",
    "fetch",
    "file_digest",
    "load",
    "mnist1d_arrays",
    "read_cifar10",
    "read_idx",
]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

STANDARDIZE = ("channel", "feature", "none")


def as_dtype(dtype: str | torch.dtype, name: str = "dtype") -> torch.dtype:
    """``"float32"``/``"float64"`` (or the torch dtype) → torch dtype; ValueError otherwise."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.replace("torch.", "") in DTYPES:
        return DTYPES[dtype.replace("torch.", "")]
    raise ValueError(f"unknown {name} {dtype!r}; allowed: {sorted(DTYPES)}")


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
        """Number n of training samples (rows of ``X_train``)."""
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples (rows of ``X_test``)."""
        return int(self.X_test.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train {tuple(self.X_train.shape)}, test "
            f"{tuple(self.X_test.shape)}, classes {list(self.classes)}, {self.X_train.dtype})"
        )


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True)
class LoadOptions:
    """The options of :func:`load` (each is also a keyword of ``load``).

    Attributes:
        classes: keep only these original labels (re-indexed 0..k−1 in the given order), or a
            count c meaning labels 0..c−1; None keeps all.
        n_train, n_test: sizes after the class filter (a seeded random subset); None keeps all.
        test_fraction: digits only — share of samples held out (stratified split by ``seed``).
            MNIST-1D/MNIST/Fashion/CIFAR use their official train/test split.
        seed: split / subsampling seed (numpy ``default_rng``), an integer in 0..2**63−1.
        standardize: ``"channel"`` (default), ``"feature"``, ``"none"`` (True / False:
            ``"channel"`` / ``"none"``); see :func:`load`.
        one_hot: targets Y as one-hot floats [n, k] (squared loss) or int64 labels [n].
        flatten: return inputs as [n, d] instead of [n, C, H, W].
        dtype: ``"float32"`` or ``"float64"`` (or the torch dtype).
        data_dir, download, verify: see :func:`flatbook.data_files.fetch` (full-scale data
            sets only).
    """

    classes: Sequence[int] | int | None = None
    n_train: int | None = None
    n_test: int | None = None
    test_fraction: float = 0.25
    seed: int = 0
    standardize: str | bool = "channel"
    one_hot: bool = True
    flatten: bool = False
    dtype: str | torch.dtype = torch.float32
    data_dir: str | Path | None = None
    download: bool = True
    verify: bool = True

    @classmethod
    def from_flags(cls, **flags: Any) -> LoadOptions:
        """The record from :func:`load`'s keyword form; TypeError naming an unknown keyword
        and listing the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(flags) - set(allowed))
        if unknown:
            raise TypeError(f"load() got unexpected keyword(s) {unknown}; allowed: {allowed}, "
                            "or options=LoadOptions(...)")  # fmt: skip
        return cls(**flags)


class _Split(NamedTuple):
    """One data set's train/test split after the class filter, before subsampling: X float64
    [n, C, H, W] (pixels scaled to [0, 1]; MNIST-1D as generated), y int64 original labels
    [n]; ``keep`` the kept original labels in index order."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    keep: tuple[int, ...]
    class_names: tuple[str, ...]
    input_shape: tuple[int, ...]


# ------------------------------------------------------------------------------ load


def load(name: str = "digits", *, options: LoadOptions | None = None, **flags: Any) -> Dataset:
    """Load a data set as tensors: ``load(name, options=LoadOptions(...))`` or
    ``load(name, n_train=…, seed=…, …)`` with the fields of :class:`LoadOptions` as keywords
    (not both).

    Pixels are scaled to [0, 1] (digits: /16, others: /255), then standardised with statistics
    of the training split only: ``"channel"`` — x ← (x − μ_c)/σ_c per channel (default),
    ``"feature"`` — per input coordinate (σ = 0 coordinates, e.g. digits' blank corners, are
    left unscaled), ``"none"``.

    Args:
        name: ``"digits"`` (offline, default), ``"mnist1d"`` (generated offline), ``"mnist"``,
            ``"fashion_mnist"``, ``"cifar10"`` (aliases such as ``"cifar"`` resolved).
        options: the record; its fields are described in :class:`LoadOptions`.

    Raises:
        ValueError: an unknown data set or a bad option value (naming the option).
        TypeError: an unknown keyword, or both ``options`` and keywords.
        DataUnavailableError: full-scale files missing and not downloadable.
    """
    if options is not None and flags:
        raise TypeError("pass options=LoadOptions(...) or keywords, not both (got "
                        f"{sorted(flags)})")  # fmt: skip
    o = options if options is not None else LoadOptions.from_flags(**flags)
    key = canonical_name(name)
    dt = as_dtype(o.dtype)
    how = _standardize_mode(o.standardize)
    seed = check_seed(o.seed)
    rng = np.random.default_rng(seed)
    s = _split(key, o, seed)
    itr = _subsample(len(s.y_train), o.n_train, rng, "n_train")
    ite = _subsample(len(s.y_test), o.n_test, rng, "n_test")
    Xtr, ytr, Xte, yte = s.X_train[itr], s.y_train[itr], s.X_test[ite], s.y_test[ite]
    if len(ytr) == 0 or len(yte) == 0:
        raise ValueError(f"{key} with classes {list(s.keep)}: empty train or test split")
    mean, std = _statistics(Xtr, how, s.input_shape)
    Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
    return _dataset(key, s._replace(X_train=Xtr, y_train=ytr, X_test=Xte, y_test=yte),
                    (mean, std), o, dt)  # fmt: skip


def _standardize_mode(standardize: str | bool) -> str:
    """``standardize`` as one of :data:`STANDARDIZE` (True → ``"channel"``, False → ``"none"``)."""
    if standardize is True:
        return "channel"
    if standardize is False:
        return "none"
    return check_choice(standardize, "standardize", STANDARDIZE)


def _split(key: str, o: LoadOptions, seed: int) -> _Split:
    """The class-filtered train/test split of data set ``key`` (:class:`_Split`)."""
    if key == "mnist1d":
        keep = _kept(o.classes, 10)
        return _filtered(*mnist1d_arrays(), keep, DIGITS_CLASSES, (1, 1, 40))
    spec = DATASETS[key]
    if spec is None:
        return _digits_split(o, seed)
    keep = _kept(o.classes, len(spec.class_names))
    paths = fetch(key, o.data_dir, download=o.download, verify=o.verify)
    Xtr, ytr, Xte, yte = read_distribution(key, paths)
    if tuple(Xtr.shape[1:]) != spec.input_shape or tuple(Xte.shape[1:]) != spec.input_shape:
        raise ValueError(f"{key}: images {Xtr.shape[1:]}, expected {spec.input_shape}")
    s = _filtered(Xtr, ytr, Xte, yte, keep, spec.class_names, spec.input_shape)
    return s._replace(X_train=s.X_train.astype(np.float64) / 255.0,
                      X_test=s.X_test.astype(np.float64) / 255.0)  # fmt: skip


def _digits_split(o: LoadOptions, seed: int) -> _Split:
    """scikit-learn's digits, class-filtered, split by ``train_test_split`` stratified on the
    labels (``test_fraction`` held out, ``random_state = seed``)."""
    from sklearn.model_selection import train_test_split

    test_fraction = check_fraction(o.test_fraction, "test_fraction",
                                   " (the share of samples held out)")  # fmt: skip
    X_all, y_all = digits_arrays()  # [1797, 1, 8, 8], [1797]
    keep = _kept(o.classes, 10)
    mask = np.isin(y_all, keep)
    X_all, y_all = X_all[mask], y_all[mask]
    Xtr, Xte, ytr, yte = train_test_split(
        X_all, y_all, test_size=test_fraction, random_state=seed, stratify=y_all
    )
    return _Split(Xtr, ytr, Xte, yte, keep, DIGITS_CLASSES, (1, 8, 8))


def _kept(classes: Sequence[int] | int | None, n_all: int) -> tuple[int, ...]:
    """The original labels kept (:func:`flatbook._validate.check_classes` against the data
    set's ``n_all`` labels): all for None, 0..c−1 for a count c, else the labels given."""
    c = check_classes(classes, "classes", n_all)
    if c is None:
        return tuple(range(n_all))
    return tuple(range(c)) if isinstance(c, int) else c


def _filtered(Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, yte: np.ndarray,
              keep: tuple[int, ...], names: tuple[str, ...], shape: tuple[int, ...]) -> _Split:
    """The samples of the train and test split whose label is in ``keep``."""
    mtr, mte = np.isin(ytr, keep), np.isin(yte, keep)
    return _Split(Xtr[mtr], ytr[mtr], Xte[mte], yte[mte], keep, names, shape)


def _subsample(n_have: int, n_want: int | None, rng: np.random.Generator, what: str) -> np.ndarray:
    """Indices of a seeded random subset of ``n_want`` of ``n_have`` samples, in increasing
    order (all of them for None)."""
    n = check_positive_int(n_want, what, allow_none=True)
    if n is None:
        return np.arange(n_have)
    if n > n_have:
        raise ValueError(f"{what}={n} exceeds the {n_have} samples available")
    return np.sort(rng.permutation(n_have)[:n])


def _statistics(Xtr: np.ndarray, how: str, input_shape: tuple[int, ...]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Standardisation (μ, σ) fitted on the training inputs Xtr [n, C, H, W]: per channel
    ([C, 1, 1]), per feature ([C, H, W]) or none (0, 1); σ = 0 is replaced by 1 (a constant
    input is left unscaled)."""
    if how == "channel":
        mean = Xtr.mean(axis=(0, 2, 3), keepdims=True)[0]
        std = Xtr.std(axis=(0, 2, 3), keepdims=True)[0]
    elif how == "feature":
        mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    else:
        mean, std = np.zeros((input_shape[0], 1, 1)), np.ones((input_shape[0], 1, 1))
    return mean, np.where(std > 0, std, 1.0)


def _dataset(key: str, s: _Split, stats: tuple[np.ndarray, np.ndarray], o: LoadOptions,
             dt: torch.dtype) -> Dataset:
    """The :class:`Dataset` of the standardised split ``s``: labels re-indexed 0..k−1 in the
    order of ``s.keep``, targets one-hot [n, k] or labels [n], inputs (and μ, σ) flattened to
    [n, d] when ``o.flatten``, all floats in ``dt``."""
    keep, shape, k = s.keep, s.input_shape, len(s.keep)
    top = max(max(keep), int(s.y_train.max()), int(s.y_test.max()))
    remap = np.full(top + 1, -1, dtype=np.int64)
    remap[list(keep)] = np.arange(k)
    ltr, lte = torch.from_numpy(remap[s.y_train]), torch.from_numpy(remap[s.y_test])

    def targets(lab: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(lab, k).to(dt) if o.one_hot else lab.clone()

    def inputs(X: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(X)).to(dt)
        return t.reshape(t.shape[0], -1) if o.flatten else t

    def stat(a: np.ndarray) -> Tensor:
        a = np.broadcast_to(a, shape).reshape(-1) if o.flatten else np.asarray(a)
        return torch.from_numpy(np.array(a)).to(dt)

    return Dataset(
        name=key, X_train=inputs(s.X_train), Y_train=targets(ltr), labels_train=ltr,
        X_test=inputs(s.X_test), Y_test=targets(lte), labels_test=lte,
        classes=tuple(int(c) for c in keep),
        class_names=tuple(s.class_names[c] for c in keep),
        input_shape=(int(np.prod(shape)),) if o.flatten else tuple(shape),
        mean=stat(stats[0]), std=stat(stats[1]),
        info={"standardize": _standardize_mode(o.standardize), "seed": int(o.seed),
              "one_hot": bool(o.one_hot)},
    )  # fmt: skip
