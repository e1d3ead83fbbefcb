"""Data loading: digits split/standardisation, IDX and CIFAR readers on files written here in
the real formats, and the download path against a loopback HTTP server (offline)."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import io
import pickle
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from flatbook import data

IDX_NAMES = {
    "train-images-idx3-ubyte.gz": "train_x",
    "train-labels-idx1-ubyte.gz": "train_y",
    "t10k-images-idx3-ubyte.gz": "test_x",
    "t10k-labels-idx1-ubyte.gz": "test_y",
}


def write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX: 0, 0, type byte, ndim, big-endian uint32 sizes, big-endian data (gzip if .gz)."""
    codes = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D,
             np.float64: 0x0E}  # fmt: skip
    code = codes[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(s.to_bytes(4, "big") for s in arr.shape)
    body = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + body)


def fake_mnist(folder: Path, n_train: int = 40, n_test: int = 20) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": np.arange(n_train, dtype=np.uint8) % 10,
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": np.arange(n_test, dtype=np.uint8) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for fname, key in IDX_NAMES.items():
        write_idx(folder / fname, arrays[key])
    return arrays


def fake_cifar(path: Path, per_batch: int = 6, evil: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out: dict[str, list[np.ndarray]] = {"x": [], "y": []}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            y = [int(v) for v in rng.integers(0, 10, per_batch)]
            d: dict[bytes, object] = {b"batch_label": member.encode(), b"labels": y, b"data": x}
            if evil and member == "test_batch":
                d[b"x"] = functools.partial(print, "pwned")  # a non-numpy global: refused
            blob = pickle.dumps(d, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
            out["x"].append(x.reshape(-1, 3, 32, 32))
            out["y"].append(np.asarray(y))
    return {
        "train_x": np.concatenate(out["x"][:5]),
        "train_y": np.concatenate(out["y"][:5]),
        "test_x": out["x"][5],
        "test_y": out["y"][5],
    }


# ---------------------------------------------------------------------------- digits


def test_digits_split_and_standardisation_fit_on_train() -> None:
    d = data.load("digits", dtype="float64")
    assert d.X_train.shape == (1347, 1, 8, 8) and d.X_test.shape == (450, 1, 8, 8)
    assert d.n_classes == 10 and d.Y_train.shape == (1347, 10)
    assert torch.equal(d.Y_train.argmax(1), d.labels_train)
    # train statistics are exactly standard (per channel); test ones are not
    assert abs(d.X_train.mean().item()) < 1e-12 and abs(d.X_train.std(correction=0) - 1) < 1e-12
    assert abs(d.X_test.mean().item()) > 1e-4
    # the stored mean/std undo the transform back onto the raw [0, 1] pixel grid (k/16)
    raw = d.X_train * d.std + d.mean
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-9)
    # stratified: every class present in both splits with similar frequency
    assert torch.bincount(d.labels_test, minlength=10).min() >= 40


def test_digits_class_subset_subsample_and_seed() -> None:
    d = data.load("digits", classes=[7, 1], n_train=50, n_test=30, flatten=True, seed=3)
    assert d.classes == (7, 1) and d.class_names == ("7", "1")
    assert d.X_train.shape == (50, 64) and d.X_test.shape == (30, 64)
    assert set(d.labels_train.tolist()) == {0, 1}
    full = data.load("digits", classes=[7, 1], flatten=True, seed=3, standardize="none")
    assert d.Y_train.shape == (50, 2)
    same = data.load("digits", classes=[7, 1], n_train=50, n_test=30, flatten=True, seed=3)
    other = data.load("digits", classes=[7, 1], n_train=50, n_test=30, flatten=True, seed=4)
    assert torch.equal(d.X_train, same.X_train) and not torch.equal(d.X_train, other.X_train)
    # the filter keeps exactly the sevens and ones of scikit-learn's digits, 7 ↦ index 0
    from sklearn.datasets import load_digits

    dig = load_digits()
    assert full.n_train + full.n_test == np.isin(dig.target, [7, 1]).sum()
    row = full.X_train[0].numpy() * 16
    match = np.flatnonzero((dig.data == row).all(1))
    assert len(match) >= 1 and dig.target[match[0]] == [7, 1][full.labels_train[0]]
    two = data.load("digits", classes=2, one_hot=False)
    assert two.classes == (0, 1) and two.Y_train.dtype == torch.int64 and two.Y_train.ndim == 1


def test_feature_standardisation_leaves_constant_pixels() -> None:
    d = data.load("digits", standardize="feature", flatten=True, dtype=torch.float64)
    std = d.X_train.std(0, correction=0)
    const = d.std == 1.0  # σ = 0 on the training set: left unscaled (no division by zero)
    assert torch.isfinite(d.X_train).all() and const.any()
    assert torch.allclose(std[~const], torch.ones_like(std[~const]), atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "imagenet"}, r"unknown dataset 'imagenet'; allowed: .*digits"),
        ({"classes": [1]}, r"classes must name ≥ 2"),
        ({"classes": [1, 1]}, r"classes has duplicates"),
        ({"classes": [3, 12]}, r"classes \[12\] out of range"),
        ({"classes": 11}, r"classes=11"),
        ({"classes": "ab"}, r"classes must be"),
        ({"n_train": 5000}, r"n_train=5000 exceeds"),
        ({"n_test": 0}, r"n_test must be a positive integer"),
        ({"test_fraction": 1.5}, r"test_fraction"),
        ({"standardize": "pixel"}, r"unknown standardize 'pixel'"),
        ({"dtype": "float16"}, r"unknown dtype 'float16'; allowed"),
        ({"seed": -1}, r"seed must be"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs)


@pytest.mark.parametrize("classes", ["12", [1.0, 2.0], [True, False], [-1, 3]])
def test_classes_must_be_integer_labels(classes: object) -> None:
    # a string is not a list of labels ("12" is not [1, 2]); floats and bools are not labels
    with pytest.raises(ValueError, match="classes"):
        data.load("digits", classes=classes)


def test_options_record_and_keywords_give_the_same_data() -> None:
    kw = {"classes": [3, 8], "n_train": 40, "n_test": 20, "seed": 5, "flatten": True,
          "standardize": "feature", "one_hot": False, "dtype": "float64"}
    a = data.load("digits", **kw)
    b = data.load("digits", options=data.LoadOptions(**kw))
    for f in ("X_train", "Y_train", "X_test", "Y_test", "mean", "std"):
        assert torch.equal(getattr(a, f), getattr(b, f))
    assert a.Y_train.dtype == torch.int64 and a.info == b.info == {
        "standardize": "feature", "seed": 5, "one_hot": False}
    with pytest.raises(TypeError, match=r"unexpected keyword.*\['n_trian'\].*allowed: .*n_train"):
        data.load("digits", n_trian=40)
    with pytest.raises(TypeError, match="not both"):
        data.load("digits", options=data.LoadOptions(), seed=1)


# ---------------------------------------------------------------------------- readers


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_read_idx_roundtrip(tmp_path: Path, dtype: type, suffix: str) -> None:
    arr = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype is np.uint8:
        arr = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / f"a.idx{suffix}", arr)
    out = data.read_idx(tmp_path / f"a.idx{suffix}")
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, arr)


def test_read_idx_rejects_truncated_and_bad_magic(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.gz", np.zeros((4, 3), np.uint8))
    blob = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "t.gz").write_bytes(gzip.compress(blob[:-2]))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(tmp_path / "t.gz")
    (tmp_path / "m").write_bytes(b"\x01\x02\x08\x01" + blob[4:])
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "m")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_load_idx_dataset_from_data_dir(tmp_path: Path, name: str) -> None:
    arrays = fake_mnist(tmp_path / name)
    d = data.load(name, data_dir=tmp_path, verify=False, standardize="none", dtype="float64")
    assert d.X_train.shape == (40, 1, 28, 28) and d.X_test.shape == (20, 1, 28, 28)
    assert torch.equal(d.X_train[:, 0] * 255, torch.from_numpy(arrays["train_x"]).double())
    assert torch.equal(d.labels_test, torch.from_numpy(arrays["test_y"]).long())
    sub = data.load(name, data_dir=tmp_path, verify=False, classes=[2, 5], flatten=True)
    assert sub.n_train == 8 and sub.X_train.shape[1] == 784
    assert sub.class_names == data.DATASETS[name].class_names[2:6:3]  # type: ignore[union-attr]


def test_read_and_load_cifar10(tmp_path: Path) -> None:
    arrays = fake_cifar(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    Xtr, ytr, Xte, yte = data.read_cifar10(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    assert Xtr.shape == (30, 3, 32, 32) and Xte.shape == (6, 3, 32, 32)
    assert np.array_equal(Xtr, arrays["train_x"]) and np.array_equal(yte, arrays["test_y"])
    d = data.load("cifar10", data_dir=tmp_path, verify=False, classes=[0, 1, 2, 3, 4, 5, 6, 7])
    keep = np.isin(arrays["train_y"], range(8))
    assert d.n_train == keep.sum() and d.input_shape == (3, 32, 32)
    # per-channel standardisation with training statistics
    assert torch.allclose(d.X_train.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)


def test_cifar_unpickler_refuses_foreign_objects(tmp_path: Path) -> None:
    fake_cifar(tmp_path / "c.tar.gz", evil=True)
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        data.read_cifar10(tmp_path / "c.tar.gz")


def test_present_file_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    fake_mnist(tmp_path / "mnist")
    with pytest.raises(data.ChecksumError, match="does not match the published md5"):
        data.load("mnist", data_dir=tmp_path)


# ---------------------------------------------------------------------------- download


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server serving ``tmp_path/srv``."""
    root = tmp_path / "srv"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_verifies_and_writes_atomically(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, root = server
    arrays = fake_mnist(root)
    spec = data.DATASETS["mnist"]
    assert spec is not None
    files = tuple(dataclasses.replace(f, md5=md5(root / f.name)) for f in spec.files)
    monkeypatch.setitem(data.DATASETS, "mnist", dataclasses.replace(spec, files=files))
    dest = tmp_path / "dl"
    paths = data.fetch("mnist", dest, mirror=url, progress=False)
    for name, p in paths.items():
        assert p.read_bytes() == (root / name).read_bytes()
    assert sorted(x.name for x in (dest / "mnist").iterdir()) == sorted(IDX_NAMES)  # no .part
    d = data.load("mnist", data_dir=dest, standardize="none", dtype="float64")
    assert torch.equal(d.labels_train, torch.from_numpy(arrays["train_y"]).long())


def test_download_checksum_mismatch_is_a_clear_error(
    server: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = server
    fake_cifar(root / "cifar-10-python.tar.gz")  # not the published archive
    dest = tmp_path / "dl"
    with pytest.raises(data.ChecksumError, match=r"checksum mismatch for cifar-10-python"):
        data.fetch("cifar10", dest, mirror=url, progress=False)
    assert not (dest / "cifar10").exists() or not any((dest / "cifar10").iterdir())
    # download_file with SHA-256
    good = hashlib.sha256((root / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    out = data.download_file(f"{url}/cifar-10-python.tar.gz", dest / "x.tgz", sha256=good)
    assert out.read_bytes() == (root / "cifar-10-python.tar.gz").read_bytes()
    with pytest.raises(data.ChecksumError, match="expected sha256"):
        data.download_file(f"{url}/cifar-10-python.tar.gz", dest / "y.tgz", sha256="0" * 64)
    assert not (dest / "y.tgz").exists()


def test_offline_message_names_files_and_folder(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port with nobody listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(data.DataUnavailableError) as e:
        data.fetch("fashion_mnist", tmp_path, mirror=f"http://127.0.0.1:{port}", timeout=5)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "fashion_mnist") in msg
    assert "download failed" in msg and "\n" not in msg
    with pytest.raises(data.DataUnavailableError, match="download=False"):
        data.load("cifar10", data_dir=tmp_path, download=False)


def test_mnist1d_is_generated_offline_and_subsampled_by_seed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mnist1d.data as m1d

    def no_download(*a: object, **k: object) -> None:
        raise AssertionError("get_dataset downloads; flatbook must never call it")

    monkeypatch.setattr(m1d, "get_dataset", no_download)
    a = data.load("mnist1d", n_train=300, n_test=100, seed=1, flatten=True)
    b = data.load("mnist1d", n_train=300, n_test=100, seed=1, flatten=True)
    c = data.load("mnist1d", n_train=300, n_test=100, seed=2, flatten=True)
    assert a.X_train.shape == (300, 40) and a.n_classes == 10 and a.Y_train.shape == (300, 10)
    assert torch.equal(a.X_train, b.X_train) and not torch.equal(a.X_train, c.X_train)
    # standardised with training statistics: mean 0, unit std over the training inputs
    assert abs(float(a.X_train.mean())) < 1e-5 and abs(float(a.X_train.std()) - 1) < 0.05
    Xtr, ytr, Xte, yte = data.mnist1d_arrays()
    assert Xtr.shape == (4000, 1, 1, 40) and Xte.shape == (1000, 1, 1, 40)
    assert set(np.unique(ytr)) == set(range(10)) and not Xtr.flags.writeable
