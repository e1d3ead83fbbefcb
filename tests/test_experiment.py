"""Run configs, the result store, resume after a kill, sweeps that survive divergence and
failure, stale-result refusal, atomic writes, ≥ 20 kinds of bad parameters."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from flatbook import __version__, runspec, train
from flatbook import experiment as ex
from flatbook._io import DamagedFileError, atomic_write, dumps, read_json, seal, write_json

TINY = dict(
    n_train=48, n_test=24, classes=[0, 1, 2], model_kw={"hidden": [8]}, steps=30,
    measure_every=10, schedule="linear", eval_size=16, measures=("sharpness", "trace"),
    batch_size=8, lr=0.1, progress=False, checkpoint_every=10, dtype="float64",
)  # fmt: skip


def tiny(**kw: object) -> ex.RunConfig:
    return ex.RunConfig(**{**TINY, **kw})  # type: ignore[arg-type]


def without_time(doc: dict) -> dict:
    doc = json.loads(dumps(doc))
    doc.pop("sha256", None)  # the seal covers the timestamps too
    for k in ("created", "elapsed_s"):
        doc["provenance"].pop(k)
    return doc


# ------------------------------------------------------------------------- config identity


def test_config_hash_is_semantic() -> None:
    a = tiny()
    assert a.config_hash == tiny(lr=0.1, progress=True, threads=2, device="auto").config_hash
    assert a.config_hash == tiny(model="MLP", classes=(0, 1, 2)).config_hash  # normalised
    assert a.config_hash == ex.RunConfig.from_dict(json.loads(json.dumps(a.to_dict()))).config_hash
    assert a.config_hash != tiny(lr=0.2).config_hash != tiny(seed=1).config_hash
    assert a.run_id.startswith("mlp-digits-lr0.1-b8-s0-") and a.run_id.endswith(a.config_hash[:10])
    assert ex.RunConfig().steps == ex.DEFAULT_STEPS
    e = ex.RunConfig().replace(epochs=2)
    assert e.steps is None and e.epochs == 2.0 and e.replace(steps=5000).epochs is None


def test_grid_is_a_cartesian_product() -> None:
    cfgs = ex.grid(tiny(), lr=[0.05, 0.1], batch_size=[4, 8], seed=[0, 1])
    assert len(cfgs) == 8 and len({c.run_id for c in cfgs}) == 8
    assert [(c.lr, c.batch_size, c.seed) for c in cfgs[:3]] == [
        (0.05, 4, 0), (0.05, 4, 1), (0.05, 8, 0),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown grid axis 'learning_rate'"):
        ex.grid(tiny(), learning_rate=[0.1])


# ------------------------------------------------------------------------- run specification

RUN_IDS = {  # computed by the code before the run specification (flatbook.runspec) existed
    "mlp-digits-lr0.2-b32-s0-9e6d237d08": {},
    "mlp-digits-lr0.1-b8-s0-69d5348536": {**TINY, "classes": [0, 1, 2], "measures": [
        "sharpness", "trace"]},
    "mlp-digits-lr0.05-bfull-s0-ce5f9b213d": {"steps": None, "epochs": 3.0, "batch_size": "full",
                                              "lr": 0.05},
    "mlp-digits-lr0.2-b32-ln0.1-s7-157ab27b9f": {"label_noise": 0.1, "seed": 7, "data_seed": 3},
    "mlp-digits-lr0.001-b32-s0-a23dd02f7f": {"optimizer": "adam", "lr": 1e-3, "classes": 4,
                                             "loss": "cross_entropy", "weight_decay": 1e-4},
    "mlp-digits-lr0.2-b32-s0-3f2125cc73": {"momentum": 0.9, "nesterov": True, "measures": [],
                                           "target_loss": 1e-4, "sharpness_tol": 1e-4},
    "lenet5-digits-lr0.2-b32-s0-238baf5596": {"model": "lenet5", "dtype": "float64",
                                              "model_kw": {"activation": "relu"},
                                              "divergence_threshold": 1e5},
}  # fmt: skip


@pytest.mark.parametrize("run_id", list(RUN_IDS))
def test_run_ids_are_those_of_the_code_before_the_run_specification(run_id: str) -> None:
    cfg = ex.RunConfig.from_dict(RUN_IDS[run_id])
    assert cfg.run_id == run_id
    assert ex.RunConfig.from_dict(cfg.to_dict()) == cfg  # a stored config reads back equal


def test_the_declaration_generates_the_config_the_training_options_and_the_flags(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RunConfig's fields, TrainOptions and the CLI flags all come from runspec.PARAMS; a new
    Param appears in each of them."""
    import argparse
    import dataclasses

    names = [p.name for p in runspec.PARAMS]
    assert [f.name for f in dataclasses.fields(ex.RunConfig)] == names
    assert ex.OPERATIONAL == {"device", "threads", "checkpoint_every", "progress", "data_dir"}
    opts = runspec.train_options(tiny(), steps=30)
    assert (opts.lr, opts.batch_size, opts.eval_seed, opts.measure_every) == (0.1, 8, 0, 10)
    extra = runspec.Param("warmup", "int", 0, "warm-up steps", runspec.V.seed, "optimisation",
                          runspec.Flag(type=int), runspec.TrainUse())
    params = (*runspec.PARAMS, extra)
    Config = runspec.spec_class(params)(type("Config", (), {}))
    assert Config().warmup == 0 and Config(warmup=5).warmup == 5 and "warmup" in Config.__doc__
    with pytest.raises(ValueError, match="warmup"):
        Config(warmup=-1)
    train_params = tuple(runspec._train_param(p) for p in params if p.train is not None)
    assert train_params[-1].name == "warmup"
    parser = argparse.ArgumentParser()
    monkeypatch.setattr(runspec, "PARAMS", params)
    runspec.add_arguments(parser)
    assert "--warmup" in parser.format_help() and "(default: 0)" in parser.format_help()


def test_no_second_list_of_the_run_parameters_in_the_package() -> None:
    """No call or function signature in flatbook/ (outside runspec) spells out the run
    parameters one by one (as RunConfig's fields, the CLI and train() used to)."""
    import ast

    pkg = Path(runspec.__file__).parent
    names = set(runspec.BY_NAME) | {p.name for p in runspec.TRAIN_PARAMS}
    for path in sorted(pkg.rglob("*.py")):
        if path.name == "runspec.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                used = {k.arg for k in node.keywords} & names
            elif isinstance(node, ast.FunctionDef):
                a = node.args
                used = {x.arg for x in (*a.args, *a.kwonlyargs)} & names
            elif isinstance(node, ast.ClassDef):
                used = {t.target.id for t in node.body if isinstance(t, ast.AnnAssign)
                        and isinstance(t.target, ast.Name)} & names  # fmt: skip
            else:
                continue
            # a few related ones together are normal (data.load's options); the old lists
            # held 14-32 of them
            assert len(used) <= 10, f"{path.name}:{node.lineno} lists {sorted(used)}"


def test_defaults_that_depend_on_another_parameter_adapt_to_it() -> None:
    small = ex.RunConfig(n_train=200)
    assert (small.eval_size, small.batch_size, small.steps) == (200, 32, ex.DEFAULT_STEPS)
    assert ex.RunConfig(n_train=20).batch_size == 20
    assert ex.RunConfig(steps=500).measure_every == 500
    assert ex.RunConfig(n_train=300).config_hash == ex.RunConfig(n_train=300,
                                                                 eval_size=256).config_hash
    assert small.replace(n_train=100).eval_size == 100  # derived again
    assert small.replace(n_train=1000).eval_size == 256
    fixed = ex.RunConfig(n_train=200, eval_size=150)
    assert fixed.replace(n_train=400).eval_size == 150  # given: kept
    with pytest.raises(ValueError, match=r"eval_size=256 exceeds the training set \(n_train=200"):
        ex.RunConfig(n_train=200, eval_size=256)  # given explicitly: not silently changed
    assert ex.RunConfig(steps=None, epochs=2).steps is None


def test_momentum_is_an_sgd_option() -> None:
    adam = ex.RunConfig(optimizer="adam", lr=1e-3)
    assert adam.momentum == 0.0 and runspec.train_options(adam).optimizer == "adam"
    with pytest.raises(ValueError, match=r"momentum=0.9 is an option of optimizer='sgd', not "
                                         r"used with optimizer='adam'"):
        adam.replace(momentum=0.9)


def test_more_threads_than_cores_are_capped_with_a_note() -> None:
    cores = runspec.available_cores()
    cfg = tiny(threads=1000)
    assert cfg.threads == 1000  # the config keeps what was asked (not hashed)
    with pytest.warns(runspec.CoresWarning, match=f"threads=1000 exceeds the {cores} CPU"):
        got = ex.resolve_threads(cfg, torch.device("cpu"), 10, note=True)
    assert got == cores
    assert ex.resolve_threads(tiny(threads=1), torch.device("cpu"), 10, note=True) == 1


# ------------------------------------------------------------------------- bad parameters

BAD = [
    ({"model": "resnet50"}, "model"),
    ({"dataset": "imagenet"}, "dataset"),
    ({"loss": "hinge"}, "loss"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1}, "lr"),
    ({"lr": float("inf")}, "lr"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": "all"}, "batch_size"),
    ({"steps": 0}, "steps"),
    ({"steps": 10, "epochs": 2}, "epochs"),
    ({"steps": None, "epochs": -1.0}, "epochs"),
    ({"momentum": 1.5}, "momentum"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"nesterov": True}, "nesterov"),
    ({"classes": [3]}, "classes"),
    ({"classes": [1, 1]}, "classes"),
    ({"classes": 1}, "classes"),
    ({"classes": "01"}, "classes"),
    ({"n_train": 0}, "n_train"),
    ({"n_test": -5}, "n_test"),
    ({"measure_every": 0}, "measure_every"),
    ({"measure_every": 100}, "measure_every"),  # > steps
    ({"schedule": "cosine"}, "schedule"),
    ({"measures": ("sharpness", "entropy")}, "measure"),
    ({"measures": "report"}, "measures"),
    ({"eval_size": 0}, "eval_size"),
    ({"seed": -1}, "seed"),
    ({"data_seed": 1.5}, "data_seed"),
    ({"dtype": "float16"}, "dtype"),
    ({"standardize": "zscore"}, "standardize"),
    ({"target_loss": 0}, "target_loss"),
    ({"sharpness_tol": -1e-3}, "sharpness_tol"),
    ({"divergence_threshold": 0}, "divergence_threshold"),
    ({"device": "tpu"}, "device"),
    ({"threads": 0}, "threads"),
    ({"checkpoint_every": -10}, "checkpoint_every"),
    ({"model_kw": {"depth": 3}}, "model_kw"),
    ({"progress": "yes"}, "progress"),
    # each parameter against its meaning
    ({"lr": 1e-320}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"optimizer": "adam", "momentum": 0.9}, "momentum"),
    ({"optimizer": "adam", "nesterov": True}, "nesterov"),
    ({"steps": None, "epochs": 1e-9}, "epochs"),
    ({"steps": None, "epochs": 2.5}, "epochs"),
    ({"steps": 12.0}, "steps"),
    ({"sharpness_tol": 1.0}, "sharpness_tol"),
    ({"sharpness_tol": 0.0}, "sharpness_tol"),
    ({"seed": 2**64}, "seed"),
    ({"batch_size": 49}, "batch_size"),  # > n_train=48
    ({"eval_size": 49}, "eval_size"),
    ({"label_noise": 0.1, "loss": "cross_entropy"}, "label_noise"),
    ({"nesterov": 1}, "nesterov"),
    ({"data_dir": 3}, "data_dir"),
]


@pytest.mark.parametrize(("kwargs", "param"), BAD, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD)])
def test_bad_parameters_give_one_line_errors_naming_them(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError) as e:
        tiny(**kwargs)
    msg = str(e.value)
    assert param in msg and "\n" not in msg
    assert e.value.param in runspec.BY_NAME  # the field it is about (the CLI names its flag)
    assert len({p for _, p in BAD}) >= 20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": None, "eval_size": 2000}, r"eval_size=2000 exceeds the training set"),
        ({"n_train": 5000}, r"n_train=5000 exceeds"),
        ({"classes": [4, 11]}, r"classes \[11\] out of range"),
        ({"model": "vit", "model_kw": {"patch": 3}}, r"patch \(3\) must divide"),
        ({"steps": None, "epochs": 1.0, "measure_every": 50}, r"measure_every=50 exceeds"),
    ],
)
def test_data_dependent_errors_come_before_anything_is_written(
    tmp_path: Path, kwargs: dict, match: str
) -> None:
    cfg = tiny(**kwargs)
    with pytest.raises(ValueError, match=match):
        ex.run(cfg, tmp_path)
    with pytest.raises(ValueError, match=match):
        ex.validate([tiny(), cfg])
    assert not any(tmp_path.iterdir())


def test_unknown_fields_in_a_stored_config() -> None:
    with pytest.raises(ValueError, match=r"unknown RunConfig field\(s\) \['learning_rate'\]"):
        ex.RunConfig.from_dict({"learning_rate": 0.1})


# ------------------------------------------------------------------------- run and store


def test_run_writes_the_documented_layout_and_is_deterministic(tmp_path: Path) -> None:
    cfg = tiny(measures=("sharpness", "trace", "report"))
    res = ex.run(cfg, tmp_path / "a")
    rd = tmp_path / "a" / cfg.run_id
    assert sorted(p.name for p in rd.iterdir()) == ["checkpoint.pt", "config.json", "results.json"]
    doc = json.loads((rd / "results.json").read_text())  # strict JSON (no bare NaN)
    assert doc["status"] == "completed" and doc["config_hash"] == cfg.config_hash
    assert [r["step"] for r in doc["records"]] == [0, 10, 20, 30]
    assert {"lambda_max", "trace_gn", "t3_weighted_slack", "train_loss", "test_acc"} <= set(
        res.final
    )
    prov = doc["provenance"]
    assert prov["flatbook"] == __version__ and len(prov["code_hash"]) == 64
    assert {"torch", "numpy"} <= set(prov["packages"]) and "commit" in prov["git"]
    assert read_json(rd / "config.json")["config"] == cfg.semantic_dict()
    # same seed, fresh store: identical files apart from timestamps
    ex.run(cfg, tmp_path / "b")
    rd2 = tmp_path / "b" / cfg.run_id
    assert (rd / "config.json").read_bytes() == (rd2 / "config.json").read_bytes()
    assert without_time(read_json(rd / "results.json")) == without_time(
        read_json(rd2 / "results.json")
    )
    # the stored model reproduces the final numbers
    net = res.load_model()
    ds, _, _ = ex.prepare(cfg)
    loss, acc = train.evaluate(net, ds.X_train, ds.Y_train, "squared")
    assert loss == pytest.approx(res.final["train_loss"], rel=1e-12)
    assert res.series("train_loss")[-1] == res.final["train_loss"] and "lambda_max" in res.keys


def test_finished_run_is_not_recomputed(tmp_path: Path) -> None:
    cfg = tiny(steps=10, measures=())
    first = ex.run(cfg, tmp_path)
    before = (first.run_dir / "results.json").read_bytes()
    again = ex.run(cfg, tmp_path)
    assert (first.run_dir / "results.json").read_bytes() == before
    assert again.final == first.final
    redo = ex.run(cfg, tmp_path, overwrite=True)
    assert redo.data["provenance"]["resumed_from"] is None


def test_kill_midway_then_rerun_resumes_to_the_same_final_numbers(tmp_path: Path) -> None:
    cfg = tiny(momentum=0.5, measures=("sharpness", "trace", "report"))
    ref = ex.run(cfg, tmp_path / "ref")

    def kill(step: int, model: torch.nn.Module, rec: dict | None) -> None:
        if step == 17:
            raise KeyboardInterrupt("simulated kill -INT")

    store = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        ex.run(cfg, store, callback=kill)
    rd = store / cfg.run_id
    # the step-17 checkpoint and the one before it (step 10), kept until the next verifies
    assert sorted(p.name for p in rd.iterdir()) == [
        "checkpoint.prev.pt", "checkpoint.pt", "config.json"]
    stale = rd / ".checkpoint.pt.12345.abcdef.tmp"  # as left by a SIGKILL during a write
    stale.write_bytes(b"partial")
    os.utime(stale, (0, 0))
    res = ex.run(cfg, store)  # "the same command again"
    assert not stale.exists()
    assert res.data["provenance"]["resumed_from"] == 17
    a, b = without_time(ref.data), without_time(res.data)
    a["provenance"].pop("resumed_from"), b["provenance"].pop("resumed_from")
    assert a == b


def test_sweep_survives_divergence_and_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLATBOOK_OFFLINE", "1")
    good, absurd = tiny(lr=0.1), tiny(lr=1e5)
    broken = tiny(dataset="mnist", data_dir=str(tmp_path / "nodata"), model_kw={"hidden": [4]})
    out = ex.sweep([absurd, broken, good, good], tmp_path)
    assert [s["status"] for s in out] == ["diverged", "failed", "completed", "completed"]
    assert "offline mode" in out[1]["error"] and "\n" not in out[1]["error"]
    div = ex.load_results(tmp_path, absurd)
    assert div.status == "diverged" and 0 < div.data["diverged_at"] < 30  # type: ignore[union-attr]
    # the failure is recorded, not hidden; finished runs are skipped on the next sweep
    failed = read_json(tmp_path / broken.run_id / "results.json")
    assert failed["status"] == "failed" and "DataUnavailableError" in failed["error"]
    again = ex.sweep([absurd, good], tmp_path)
    assert all(s["skipped"] for s in again)
    assert {r.config.run_id for r in ex.load_results(tmp_path)} == {good.run_id, absurd.run_id}


# ------------------------------------------------------------------------- stale results


def test_load_results_refuses_stale_or_mismatched_results(tmp_path: Path) -> None:
    cfg = tiny(steps=10, measures=())
    with pytest.raises(FileNotFoundError, match="no results for run"):
        ex.load_results(tmp_path, cfg)
    ex.run(cfg, tmp_path)
    assert ex.load_results(tmp_path, cfg.to_dict()).status == "completed"  # type: ignore[union-attr]
    path = tmp_path / cfg.run_id / "results.json"
    doc = read_json(path)
    # an edit that is not re-sealed is damage, whatever the edit
    doc["provenance"]["code_hash"] = "0" * 64
    write_json(path, doc)
    with pytest.raises(DamagedFileError, match=r"results.json: its content does not match its "
                                               r"checksum .* --restart"):
        ex.load_results(tmp_path, cfg)
    # the following edits are re-sealed (as an older flatbook would have written them)
    # code hash differs: warned by default, refused with check="code"
    doc["provenance"]["code_hash"] = "0" * 64
    write_json(path, seal(doc))
    with pytest.warns(UserWarning, match="different numeric code"):
        ex.load_results(tmp_path, cfg)
    with pytest.raises(ex.StaleResultsError, match="code hash"):
        ex.load_results(tmp_path, cfg, check="code")
    # another minor version: refused
    doc["provenance"]["flatbook"] = "0.0.9"
    write_json(path, seal(doc))
    with pytest.raises(ex.StaleResultsError, match=r"major.minor must match"):
        ex.load_results(tmp_path, cfg)
    assert ex.load_results(tmp_path, cfg, check="none").status == "completed"  # type: ignore[union-attr]
    # the stored config was edited: never accepted
    doc["config"]["lr"] = 0.3
    write_json(path, seal(doc))
    with pytest.raises(DamagedFileError, match=r"its config, hash and folder name do not agree"):
        ex.load_results(tmp_path, cfg, check="none")
    with pytest.raises(ValueError, match="unknown check"):
        ex.load_results(tmp_path, cfg, check="loose")


def test_atomic_write_never_leaves_a_half_written_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    write_json(target, {"a": 1})

    def crash(fh: object) -> None:
        fh.write(b'{"a": 2, "trunc')  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_json(target, {"x": float("nan"), "y": float("-inf")})
    assert "NaN" not in target.read_text() and read_json(target)["y"] == float("-inf")


def test_label_noise_is_part_of_the_run_identity_only_when_used() -> None:
    plain = ex.RunConfig(steps=10, measure_every=5)
    noisy = plain.replace(label_noise=0.1)
    assert "label_noise" not in plain.semantic_dict()     # plain-SGD ids predate the field
    assert noisy.semantic_dict()["label_noise"] == 0.1
    assert noisy.config_hash != plain.config_hash and "-ln0.1-" in noisy.run_id
    with pytest.raises(ValueError, match="label_noise"):
        plain.replace(label_noise=-1.0)
    with pytest.raises(ValueError, match="needs loss='squared'"):
        plain.replace(label_noise=0.1, loss="cross_entropy")
