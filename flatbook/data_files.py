"""The data sets' distribution files: the registry of what each data set is made of, and the
download that puts those files in place (read by :mod:`flatbook.data_readers`, loaded by
:func:`flatbook.data.load`).

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

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flatbook._io import temp_path

__all__ = [
    "ALIASES",
    "DATASETS",
    "DIGITS_CLASSES",
    "ChecksumError",
    "DataUnavailableError",
    "DatasetSpec",
    "RemoteFile",
    "canonical_name",
    "default_data_dir",
    "download_file",
    "fetch",
    "file_digest",
]

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
    paths = {f.name: folder / f.name for f in spec.files}
    missing = _missing_files(spec, folder, verify)
    if not missing:
        return paths
    reason = "download=False"
    if download and _env_flag("FLATBOOK_OFFLINE"):
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


def _env_flag(var: str) -> bool:
    """Whether the environment variable ``var`` is set to something other than "" or "0"."""
    return os.environ.get(var, "").strip() not in ("", "0")


def _missing_files(spec: DatasetSpec, folder: Path, verify: bool) -> list[RemoteFile]:
    """The files of ``spec`` absent from ``folder``; a present file whose checksum differs from
    the published one raises :class:`ChecksumError` (unless ``verify`` is False or
    ``$FLATBOOK_TRUST_DATA`` is set)."""
    missing: list[RemoteFile] = []
    for f in spec.files:
        p = folder / f.name
        if not p.is_file():
            missing.append(f)
            continue
        exp = _expected(f)
        trusted = _env_flag("FLATBOOK_TRUST_DATA")
        if verify and not trusted and exp is not None and file_digest(p, exp[0]) != exp[1]:
            raise ChecksumError(
                f"{p} does not match the published {exp[0]} {exp[1]}: delete it (it will be "
                f"downloaded again), or pass verify=False / set FLATBOOK_TRUST_DATA=1 for a "
                f"file you trust"
            )
    return missing
