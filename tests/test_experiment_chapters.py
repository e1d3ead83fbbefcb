"""The experiment chapters at full scale, offline: parameter validation, the data-loading path
with small synthetic MNIST-format / CIFAR files, the result store (load, refuse, recompute),
and the chapters' papermill entry points failing with clear messages."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import sys
import tarfile
from pathlib import Path

import jupytext
import numpy as np
import pytest

from flatbook import analysis as A
from flatbook import data
from flatbook import experiment as E
from flatbook._io import seal

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ["exp_late_phase", "exp_lr_batch", "exp_correlations", "exp_test_data", "exp_report"]


def write_idx(path: Path, arr: np.ndarray) -> None:
    """IDX (gzip): 0, 0, 0x08 (uint8), ndim, big-endian uint32 sizes, bytes."""
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(s.to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def fake_idx_dataset(folder: Path, n_train: int = 60, n_test: int = 30) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)


def fake_cifar(path: Path, per_batch: int = 20) -> None:
    rng = np.random.default_rng(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            d = {b"labels": [int(v) for v in np.arange(per_batch) % 10],
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)}
            blob = pickle.dumps(d, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.fixture
def no_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Synthetic files cannot match the published MD5s: skip that check (only here; by the
    environment too, which the worker processes of a parallel sweep inherit)."""
    monkeypatch.setattr("flatbook.data_files._expected", lambda f: None)
    monkeypatch.setenv("FLATBOOK_OFFLINE", "1")
    monkeypatch.setenv("FLATBOOK_TRUST_DATA", "1")


# ------------------------------------------------------------------ settings and parameters
def test_every_setting_is_a_valid_sweep_of_the_paper_models() -> None:
    paper = {"fashion-mlp": ("mlp", "fashion_mnist"), "cifar2-vgg11": ("vgg11", "cifar10"),
             "mnist-lenet": ("lenet5", "mnist"), "cifar10-vit": ("vit", "cifar10"),
             "cifar10-vgg10": ("vgg10", "cifar10")}
    ours = {"digits-mlp": ("mlp", "digits"), "digits-mlp-label-noise": ("mlp", "digits"),
            "digits-lenet": ("lenet5", "digits"), "mnist1d-mlp": ("mlp", "mnist1d")}
    assert set(A.SETTINGS) == set(paper) | set(ours)
    for name, (model, dataset) in (paper | ours).items():
        cfgs = A.study_configs(name)
        s = A.get_setting(name)
        assert len(cfgs) == len(s.lrs) * len(s.batch_sizes) * len(s.seeds)
        if name in paper:      # the paper's design: a wide grid, cells sharing each seed
            assert len(s.lrs) >= 4 and len(s.batch_sizes) >= 3 and len(s.seeds) >= 2
            assert not s.independent
        else:                  # ours: long runs on a small grid, every run independent
            assert s.independent and len(cfgs) >= 12
            assert len({(c.seed, c.data_seed) for c in cfgs}) == len(cfgs)
            assert all(c.seed == c.data_seed for c in cfgs)
        assert {(c.model, c.dataset) for c in cfgs} == {(model, dataset)}
        assert len({c.run_id for c in cfgs}) == len(cfgs)
    assert A.study_configs("cifar2-vgg11")[0].classes == (3, 5)   # two CIFAR-10 classes


def test_label_noise_twin_pairs_every_run() -> None:
    assert A.label_noise_twin("digits-mlp") == "digits-mlp-label-noise"
    assert A.label_noise_twin("fashion-mlp") is None
    plain = A.study_configs("digits-mlp")
    noisy = A.study_configs("digits-mlp-label-noise")
    assert [(c.lr, c.batch_size, c.seed, c.data_seed) for c in plain] == [
        (c.lr, c.batch_size, c.seed, c.data_seed) for c in noisy]
    assert {c.label_noise for c in plain} == {0.0}
    assert {c.label_noise for c in noisy} == {A.DIGITS_LABEL_NOISE}
    # the default setting measures curvature and geometry on every training point
    assert {c.eval_size for c in plain} == {plain[0].n_train}
    small = A.study_configs("digits-mlp", n_train=200, seeds=[0])
    assert {c.eval_size for c in small} == {200}


@pytest.mark.parametrize("kwargs, param", [
    ({"setting": "imagenet-resnet"}, "setting"),
    ({"lrs": []}, "lrs"),
    ({"lrs": [0.1, -0.2]}, "lrs"),
    ({"lrs": "0.1"}, "lrs"),
    ({"batch_sizes": [8, 0]}, "batch_sizes"),
    ({"batch_sizes": [8.5]}, "batch_sizes"),
    ({"seeds": [-1]}, "seeds"),
    ({"stepz": 10}, "stepz"),
    ({"steps": -5}, "steps"),
    ({"device": "tpu"}, "device"),
])
def test_bad_parameters_name_the_parameter(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        A.study_configs(**kwargs)


def test_overrides_reach_the_run_config() -> None:
    cfgs = A.study_configs("fashion-mlp", lrs=[0.05], batch_sizes=[64], seeds=[3], steps=50,
                           data_dir="/somewhere", n_train=None, device="cpu")
    (c,) = cfgs
    assert (c.lr, c.batch_size, c.seed, c.steps, c.data_dir, c.device) == (
        0.05, 64, 3, 50, "/somewhere", "cpu")
    assert c.n_train is None            # None means "the setting's": all of Fashion-MNIST


def test_chapters_share_one_parameters_cell() -> None:
    cells = []
    for ch in CHAPTERS:
        nb = jupytext.read(ROOT / "book" / f"{ch}.md")
        (p,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        cells.append(p.source)
        assert nb.metadata["flatbook"]["test_parameters"] == jupytext.read(
            ROOT / "book" / f"{CHAPTERS[0]}.md").metadata["flatbook"]["test_parameters"]
    common = cells[0].splitlines()
    for src in cells[1:]:                 # same names, defaults: the sweep is shared
        assert src.splitlines()[: len(common)] == common


# ------------------------------------------------------------------ full-scale data path
def test_fashion_mlp_path_on_synthetic_files(tmp_path: Path, no_checksums: None) -> None:
    fake_idx_dataset(tmp_path / "data" / "fashion_mnist")
    kw = dict(lrs=[0.05, 0.1], batch_sizes=[8], seeds=[0], steps=12, measure_every=4,
              n_train=40, n_test=20, eval_size=8, model_kw={"hidden": [8]}, device="cpu",
              data_dir=str(tmp_path / "data"))
    store = tmp_path / "results"
    with pytest.raises(FileNotFoundError, match="no results"):     # load-only: refused
        A.load_study("fashion-mlp", results_dir=store, compute_missing=False, **kw)
    st = A.load_study("fashion-mlp", results_dir=store, loss_threshold=10.0, **kw)
    assert st.n_runs == 2 and {s["status"] for s in st.summaries} <= {"completed", "diverged"}
    t = st.trajectories[0]
    assert t["train_loss"].shape == t["test_lambda_max"].shape == (4,)   # steps 0, 4, 8, 12
    assert int(t["test_n"][0]) == 20 and int(t["n"][0]) == 8
    assert st.results[0].data["input_shape"] == [784] and st.results[0].data["n_classes"] == 10
    # read back without computing: identical numbers
    again = A.load_study("fashion-mlp", results_dir=store, compute_missing=False,
                         loss_threshold=10.0, **kw)
    assert again.summaries[1]["trace_gn"] == st.summaries[1]["trace_gn"]
    claims = A.evaluate_claims(again, n_boot=50)
    assert [c["key"] for c in claims] == [c.key for c in A.CLAIMS]
    assert all(c["verdict"] in A.VERDICTS for c in claims)
    # results written by other numeric code are refused (and recomputed when allowed)
    res = next(A.store_for(store, A.get_setting("fashion-mlp")).glob("*/results.json"))
    doc = json.loads(res.read_text())
    doc["provenance"]["code_hash"] = "0" * 64
    res.write_text(json.dumps(seal(doc)))       # re-sealed: an unsealed edit is damage
    with pytest.raises(E.StaleResultsError, match="numeric code"):
        A.load_study("fashion-mlp", results_dir=store, compute_missing=False, **kw)
    A.load_study("fashion-mlp", results_dir=store, **kw)              # recomputed
    A.load_study("fashion-mlp", results_dir=store, compute_missing=False, **kw)


def test_cifar2_vgg11_path_on_synthetic_files(tmp_path: Path, no_checksums: None) -> None:
    fake_cifar(tmp_path / "data" / "cifar10" / "cifar-10-python.tar.gz")
    st = A.load_study("cifar2-vgg11", lrs=[0.01], batch_sizes=[4], seeds=[0], steps=2,
                      measure_every=2, eval_size=4, model_kw={"width": 0.0625}, device="cpu",
                      data_dir=str(tmp_path / "data"), results_dir=tmp_path / "results")
    (r,) = st.results
    assert r.data["classes"] == [3, 5] and r.data["input_shape"] == [3, 32, 32]
    assert r.data["n_train"] == 20 and r.data["n_classes"] == 2     # 2 of 10 labels per batch
    assert np.isfinite(st.trajectories[0]["test_lambda_max"]).all()


def test_missing_full_scale_data_is_a_clear_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLATBOOK_OFFLINE", "1")
    with pytest.raises(data.DataUnavailableError, match="train-images-idx3-ubyte.gz"):
        A.load_study("mnist-lenet", lrs=[0.1], batch_sizes=[8], seeds=[0], steps=2,
                     data_dir=str(tmp_path), results_dir=tmp_path / "r")


# ------------------------------------------------------------------ papermill entry points
def test_papermill_reports_bad_parameters_and_missing_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import papermill

    monkeypatch.setenv("FLATBOOK_OFFLINE", "1")
    nb = jupytext.read(ROOT / "book" / "exp_report.md")
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    src = tmp_path / "in.ipynb"
    jupytext.write(nb, src)
    cases = [({"setting": "imagenet"}, "unknown setting"),
             ({"setting": "fashion-mlp", "data_dir": str(tmp_path / "nodata"),
               "results_dir": str(tmp_path / "r"), "steps": 2}, "DataUnavailableError")]
    for params, msg in cases:
        with pytest.raises(papermill.PapermillExecutionError, match=msg):
            papermill.execute_notebook(str(src), str(tmp_path / "out.ipynb"), parameters=params,
                                       kernel_name="python3", log_output=False,
                                       progress_bar=False, cwd=str(tmp_path))


def test_papermill_full_scale_setting_on_synthetic_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's full-scale recipe end to end, offline: papermill runs a chapter with the
    paper's Fashion-MNIST setting on small synthetic files in the real IDX format, and the
    executed chapter shows that setting's data (784 inputs) rather than digits."""
    import papermill

    fake_idx_dataset(tmp_path / "data" / "fashion_mnist", n_train=60, n_test=30)
    monkeypatch.setenv("FLATBOOK_OFFLINE", "1")
    monkeypatch.setenv("FLATBOOK_TRUST_DATA", "1")   # synthetic files: no published checksum
    nb = jupytext.read(ROOT / "book" / "exp_late_phase.md")
    for cell in nb.cells:
        cell.metadata.setdefault("tags", [])
    src, out = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    jupytext.write(nb, src)
    params = {"setting": "fashion-mlp", "data_dir": str(tmp_path / "data"),
              "results_dir": str(tmp_path / "results"), "lrs": [0.05], "batch_sizes": [8],
              "seeds": [0], "steps": 12, "measure_every": 4, "n_train": 40,
              "loss_threshold": 10.0, "n_boot": 20,
              "overrides": {"n_test": 20, "eval_size": 8, "model_kw": {"hidden": [8]},
                            "device": "cpu"}}
    papermill.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3",
                               log_output=False, progress_bar=False, cwd=str(tmp_path))
    stored = list((tmp_path / "results").rglob("results.json"))
    assert len(stored) == 1
    doc = json.loads(stored[0].read_text())
    assert doc["config"]["dataset"] == "fashion_mnist" and doc["input_shape"] == [784]
    assert doc["status"] in {"completed", "diverged"} and len(doc["records"]) == 4
    executed = jupytext.read(out)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "fashion-mlp" in injected[0].source


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


@pytest.mark.parametrize("name", [*CHAPTERS, "own_model"])
def test_experiment_chapters_have_objectives_and_summary(name: str) -> None:
    text = (ROOT / "book" / f"{name}.md").read_text(encoding="utf-8")
    i, j = text.find("**Objectives.**"), text.find("\n## Summary")
    assert 0 < i < j < text.find("\n## Exercises"), name
    summary = text[j:text.find("\n## ", j + 5)]
    assert summary.count("\n- ") >= 2, name
