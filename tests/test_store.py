"""The result store under faults (issue 16): damaged files named with their way out — and the
way out gives the same numbers as an undisturbed run —, a full disk, an unwritable folder, a
lock per run id that survives kill -9, numerics fingerprints, store format migration, bad data
named as bad data."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flatbook import _io, locks, train
from flatbook import experiment as ex
from flatbook._io import DamagedFileError, NoSpaceError, read_json, write_json
from flatbook.store import MovedAsideWarning

TINY = dict(
    n_train=48, n_test=24, classes=[0, 1, 2], model_kw={"hidden": [8]}, steps=30,
    measure_every=10, schedule="linear", eval_size=16, measures=("sharpness", "trace"),
    batch_size=8, lr=0.1, progress=False, checkpoint_every=10, dtype="float64", momentum=0.5,
)  # fmt: skip


def tiny(**kw: object) -> ex.RunConfig:
    return ex.RunConfig(**{**TINY, **kw})  # type: ignore[arg-type]


def numbers(res: ex.Results) -> dict:
    """Everything a run computed (records, final values, status, steps), no provenance."""
    doc = json.loads(_io.dumps(res.data))
    return {k: v for k, v in doc.items() if k not in ("provenance", "sha256")}


def interrupt_at(step: int):  # noqa: ANN201
    def cb(t: int, model: torch.nn.Module, rec: dict | None) -> None:
        if t == step:
            raise KeyboardInterrupt(f"simulated kill at {t}")

    return cb


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The undisturbed run's numbers."""
    return numbers(ex.run(tiny(), tmp_path_factory.mktemp("ref")))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _garbage(p: Path) -> None:
    p.write_bytes(os.urandom(200))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _edit_results(p: Path) -> None:  # another valid value, not re-sealed
    doc = read_json(p)
    doc["final"]["train_loss"] = 0.0
    write_json(p, doc)


def _bogus_status(p: Path) -> None:
    doc = read_json(p)
    doc["status"] = "great"
    write_json(p, _io.seal(doc))


def _pickle_bomb(p: Path) -> None:  # a checkpoint that only loads unsafely
    import pickle

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    with open(p, "wb") as fh:
        torch.save({"x": Evil()}, fh, pickle_module=pickle)


DAMAGE = [
    ("checkpoint.pt", _truncate, "interrupted"),
    ("checkpoint.pt", _garbage, "interrupted"),
    ("checkpoint.pt", _empty, "interrupted"),
    ("checkpoint.pt", _pickle_bomb, "interrupted"),
    ("config.json", _truncate, "interrupted"),
    ("config.json", _garbage, "finished"),
    ("results.json", _truncate, "finished"),
    ("results.json", _garbage, "finished"),
    ("results.json", _edit_results, "finished"),
    ("results.json", _bogus_status, "finished"),
]


@pytest.mark.parametrize(("name", "damage", "state"), DAMAGE,
                         ids=[f"{n}-{d.__name__[1:]}" for n, d, _ in DAMAGE])  # fmt: skip
def test_a_damaged_file_is_named_and_its_way_out_gives_the_same_numbers(
    tmp_path: Path, reference: dict, name: str, damage: object, state: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tiny()
    other = tiny(seed=1)
    ex.run(other, tmp_path)  # an intact neighbour, still listed
    if state == "interrupted":
        with pytest.raises(KeyboardInterrupt):
            ex.run(cfg, tmp_path, callback=interrupt_at(17))
    else:
        ex.run(cfg, tmp_path)
    rd = tmp_path / cfg.run_id
    target = rd / name
    damage(target)  # type: ignore[operator]
    with pytest.raises(DamagedFileError) as e:
        ex.run(cfg, tmp_path)
    msg = str(e.value)
    assert str(target) in msg and "\n" not in msg
    assert "weights_only" not in msg and "--restart" in msg and "mv " in msg
    # torch's text (with its unsafe-load advice) is not chained to the error
    assert e.value.__context__ is None or e.value.__suppress_context__
    assert not (rd / "results.json").exists() or state == "finished"  # nothing recorded
    # show lists it as damaged, the neighbour as completed
    infos = {i.run_id: i for i in ex.inspect_store(tmp_path)}
    assert infos[cfg.run_id].status == "damaged" and str(target) in infos[cfg.run_id].note
    assert infos[other.run_id].status == "completed"
    # the stated way out: move the damaged file aside, run the same command again
    target.rename(target.with_name(target.name + ".damaged"))
    res = ex.run(cfg, tmp_path)
    assert numbers(res) == reference
    assert ex.inspect_run(rd).status == "completed"  # type: ignore[union-attr]
    assert ex.read_config_file(rd / "config.json")["config_hash"] == cfg.config_hash
    # the other way out: --restart, which moves the run aside (nothing is deleted)
    damage(rd / name) if (rd / name).exists() else None  # type: ignore[operator]
    with pytest.warns(MovedAsideWarning, match=rf"{cfg.run_id}: .* moved to .*stale"):
        assert numbers(ex.run(cfg, tmp_path, overwrite=True)) == reference
    (kept,) = (tmp_path / "stale").iterdir()
    assert (kept / f"{name}.damaged").is_file() and kept.name.startswith(cfg.run_id)


def test_a_checkpoint_that_only_loads_unsafely_never_runs_code(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "checkpoint.pt"
    _pickle_bomb(p)
    with pytest.raises(DamagedFileError, match="cannot be read as a checkpoint"):
        _io.load_checkpoint(p)
    assert "pwned" not in capfd.readouterr().out


def test_cli_names_the_damaged_file_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flatbook.__main__ import main

    args = ["run", "--n-train", "40", "--n-test", "20", "--classes", "0", "1", "2",
            "--model-kw", "hidden=[6]", "--steps", "20", "--measure-every", "10",
            "--schedule", "linear", "--eval-size", "12", "--measures", "trace",
            "--no-progress", "--checkpoint-every", "10", "--lr", "0.1", "--results-dir",
            str(tmp_path)]  # fmt: skip
    assert main(args) == 0
    (ckpt,) = tmp_path.glob("*/checkpoint.pt")
    (ckpt.parent / "results.json").unlink()
    _garbage(ckpt)
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 1 and str(ckpt) in err and "weights_only" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_checkpoints_verify_and_keep_the_previous_one(tmp_path: Path) -> None:
    p = tmp_path / "checkpoint.pt"
    for step in (1, 2, 3):
        _io.save_checkpoint(p, {"step": step, "w": torch.full((3,), float(step))})
    assert _io.load_checkpoint(p)["step"] == 3  # type: ignore[index]
    assert _io.read_checkpoint(_io.previous_checkpoint(p), "")["step"] == 2
    # a value changed inside a valid file: the digest catches it
    state = torch.load(p, weights_only=True)
    state["w"][0] = 99.0
    torch.save(state, p)
    with pytest.raises(DamagedFileError, match="does not match its checksum"):
        _io.load_checkpoint(p)
    # moved aside: the previous one is used
    p.rename(tmp_path / "bad.pt")
    assert _io.load_checkpoint(p)["step"] == 2  # type: ignore[index]


# ------------------------------------------------------------------------- storage faults


def test_full_disk_says_no_space_and_keeps_the_previous_checkpoint(
    tmp_path: Path, reference: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny()
    real = _io._write_bytes
    calls = {"n": 0}

    def full_after_first(fh: object, data: bytes) -> None:
        if ".checkpoint.pt." in str(getattr(fh, "name", "")):
            calls["n"] += 1
            if calls["n"] >= 2:  # the step-10 checkpoint fits, the step-20 one does not
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fh, data)  # type: ignore[arg-type]

    monkeypatch.setattr(_io, "_write_bytes", full_after_first)
    with pytest.raises(NoSpaceError, match=r"no space left on device writing .*checkpoint.pt "
                                           r"\(.* MB\); the previous checkpoint is kept"):
        ex.run(cfg, tmp_path)
    rd = tmp_path / cfg.run_id
    assert _io.load_checkpoint(rd / "checkpoint.pt")["step"] == 10  # type: ignore[index]
    assert not (rd / "results.json").exists() and not list(rd.glob(".*.tmp"))
    assert ex.inspect_run(rd).status == "interrupted"  # type: ignore[union-attr]
    monkeypatch.setattr(_io, "_write_bytes", real)  # space freed
    res = ex.run(cfg, tmp_path)
    assert res.data["provenance"]["resumed_from"] == 10 and numbers(res) == reference
    # a full disk while writing a JSON file says so too
    monkeypatch.setattr(_io, "_write_bytes", lambda fh, d: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device")))  # fmt: skip
    with pytest.raises(NoSpaceError, match="no space left.*the previous version is kept"):
        write_json(rd / "results.json", {"a": 1})
    assert read_json(rd / "results.json")["status"] == "completed"


def test_unwritable_store_is_refused_before_any_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    steps: list[int] = []
    with pytest.raises(_io.NotWritableError, match=r"a_file/store.* is not writable"):
        ex.run(tiny(), blocker / "store", callback=lambda t, m, r: steps.append(t))
    assert steps == []
    with pytest.raises(_io.NotWritableError, match="is not writable"):
        ex.sweep([tiny(), tiny(seed=1)], blocker / "store", progress=False)
    out = ex.run_one(tiny().to_dict(), blocker / "store")  # a job on its own: an outcome
    assert out["status"] == "failed" and "not writable" in out["error"]
    # an interrupted run in a folder that became read-only: refused before training resumes
    cfg = tiny()
    with pytest.raises(KeyboardInterrupt):
        ex.run(cfg, tmp_path / "s", callback=interrupt_at(12))

    def denied(folder: object, what: str = "results_dir") -> None:
        raise _io.NotWritableError(f"{what} {folder} is not writable (PermissionError)")

    monkeypatch.setattr(ex, "check_writable", denied)
    with pytest.raises(_io.NotWritableError):
        ex.run(cfg, tmp_path / "s", callback=lambda t, m, r: steps.append(t))
    assert steps == []


def test_cli_sweep_into_an_unwritable_folder_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flatbook.__main__ import main

    (tmp_path / "f").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--lr", "0.1", "0.2", "--steps", "10", "--measure-every", "5",
              "--n-train", "40", "--eval-size", "8", "--no-progress", "--results-dir",
              str(tmp_path / "f" / "s")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "not writable" in err and "Traceback" not in err


def test_one_run_id_trains_once_at_a_time_and_kill_9_releases_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny()
    monkeypatch.setattr(locks, "LOCK_TRIES", 1)
    code = (f"import sys, time; from flatbook import experiment as ex\n"
            f"with ex.run_lock({str(tmp_path)!r}, {cfg.run_id!r}):\n"
            f"    print('locked', flush=True); time.sleep(120)\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(ex.RunLockedError, match=rf"being trained by pid {holder.pid} "):
            ex.run(cfg, tmp_path)
        assert ex.inspect_store(tmp_path) == []  # nothing of the run exists yet
        assert ex.lock_holder(tmp_path, cfg.run_id).startswith(f"pid {holder.pid}")  # type: ignore[union-attr]
        out = ex.run_one(cfg.to_dict(), tmp_path)
        assert out["status"] == "running" and not (tmp_path / cfg.run_id / "results.json").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=60)
    assert ex.lock_holder(tmp_path, cfg.run_id) is None
    assert ex.run(cfg, tmp_path).status == "completed"


def test_show_sees_a_running_run(tmp_path: Path) -> None:
    cfg = tiny()
    seen: list[str] = []

    def look(t: int, model: torch.nn.Module, rec: dict | None) -> None:
        if t == 15:
            seen.append(ex.inspect_run(tmp_path / cfg.run_id, tmp_path).status)  # type: ignore[union-attr]

    ex.run(cfg, tmp_path, callback=look)
    assert seen == ["running"]


# ------------------------------------------------------------------------- numerics


def test_numerics_fingerprint_refuses_resume_and_flags_rendering(tmp_path: Path) -> None:
    cfg = tiny(dtype="float32", threads=1)
    with pytest.raises(KeyboardInterrupt):
        ex.run(cfg, tmp_path, callback=interrupt_at(12))
    two = cfg.replace(threads=2)
    assert two.run_id == cfg.run_id  # the semantic id is kept
    with pytest.raises(ex.NumericsMismatchError, match=r"threads: 1 ≠ 2.*--threads 1"):
        ex.run(two, tmp_path)
    # config.json moved aside: the checkpoint's own fingerprint still refuses
    rd = tmp_path / cfg.run_id
    (rd / "config.json").rename(rd / "config.json.aside")
    with pytest.raises(ex.NumericsMismatchError, match=r"threads: 1 ≠ 2"):
        ex.run(two, tmp_path)
    res = ex.run(cfg, tmp_path)  # the same settings: resumes
    assert res.numerics == {"device": "cpu", "threads": 1, "dtype": "float32",
                            "torch": str(torch.__version__)}  # fmt: skip
    # rendered under another thread count: flagged (warning + attribute), or refused
    with pytest.warns(ex.NumericsWarning, match=r"threads: 1 ≠ 2"):
        got = ex.load_results(tmp_path, two)
    assert got.numerics_mismatch == ["threads: 1 ≠ 2"]  # type: ignore[union-attr]
    with pytest.raises(ex.NumericsMismatchError, match="threads: 1 ≠ 2"):
        ex.load_results(tmp_path, two, numerics="refuse")
    assert ex.load_results(tmp_path, cfg).numerics_mismatch == []  # type: ignore[union-attr]
    # one study may not mix fingerprints
    other = ex.run(cfg.replace(seed=1, threads=2), tmp_path)
    ex.check_numerics([res, ex.run(cfg.replace(seed=2), tmp_path)])
    with pytest.raises(ex.NumericsMismatchError, match=r"different numerics \(threads: 1 ≠ 2\)"):
        ex.check_numerics([res, other])


# ------------------------------------------------------------------------- store format


def test_store_format_1_is_migrated_and_a_newer_one_refused(tmp_path: Path) -> None:
    cfg = tiny(steps=10, measures=())
    res = ex.run(cfg, tmp_path)
    rd = res.run_dir
    for name in ("results.json", "config.json"):  # as flatbook wrote them before format 2
        doc = read_json(rd / name)
        for k in ("sha256", "store_format", "numerics"):
            doc.pop(k, None)
        write_json(rd / name, doc)
    old = ex.load_results(tmp_path, cfg)
    assert old.data["migrated_from"] == 1 and old.numerics["threads"] == 1  # type: ignore[union-attr]
    assert ex.run(cfg, tmp_path).final == res.final
    doc = read_json(rd / "results.json")
    doc["store_format"] = 99
    write_json(rd / "results.json", _io.seal(doc))
    with pytest.raises(ex.StaleResultsError, match=r"store format 99, newer .* upgrade flatbook"):
        ex.load_results(tmp_path, cfg)


# ------------------------------------------------------------------------- bad data


def _net(d: int = 4, k: int = 3) -> torch.nn.Module:
    from flatbook import models

    return models.mlp([d, 5, k], seed=0, dtype=torch.float64)


def _nan_row(X: torch.Tensor, Y: torch.Tensor) -> tuple:
    X = X.clone()
    X[5, 1] = float("nan")
    return X, Y


@pytest.mark.parametrize(
    ("which", "make", "match"),
    [
        ("X", _nan_row,
         r"X_train has non-finite values \(NaN or inf\) in 1 of 20 samples \(first: sample 5\)"),
        ("Y", lambda X, Y: (X, Y.index_fill(0, torch.tensor([2, 7]), float("inf"))),
         r"Y_train has non-finite values .* in 2 of 20 samples \(first: sample 2\)"),
        ("dtype", lambda X, Y: (X.long(), Y), r"X_train has dtype torch.int64"),
        ("model dtype", lambda X, Y: (X.float(), Y), r"X_train is torch.float32 but the model"),
        ("shape", lambda X, Y: (X[:, :3], Y), r"samples of X_train \(shape \(3,\)\) do not fit"),
        ("outputs", lambda X, Y: (X, Y[:, :2]), r"Y_train has 2 columns but the model has 3"),
        ("length", lambda X, Y: (X, Y[:5]), r"X_train \(20 samples\) and Y_train .* same number"),
    ],
)
def test_bad_data_is_named_as_bad_data_before_any_step(which: str, make: object,
                                                      match: str) -> None:  # fmt: skip
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 4, generator=g, dtype=torch.float64)
    Y = torch.nn.functional.one_hot(torch.arange(20) % 3, 3).double()
    X, Y = make(X, Y)  # type: ignore[operator]
    calls: list[int] = []

    def measure(*a: object) -> dict:
        calls.append(1)
        return {}

    with pytest.raises(train.BadDataError, match="bad data: " + match):
        train.train(_net(), X, Y, steps=5, measure_every=5, measure=measure, progress=False,
                    callback=lambda t, m, r: calls.append(t))  # fmt: skip
    assert calls == []


def test_nan_in_a_stored_runs_data_is_bad_data_not_divergence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ex._load_data

    def poisoned(config: ex.RunConfig):  # noqa: ANN202
        ds = real(config)
        ds.X_train[3, 0] = float("nan")
        return ds

    monkeypatch.setattr(ex, "_load_data", poisoned)
    cfg = tiny()
    with pytest.raises(train.BadDataError, match=r"bad data: X_train has non-finite"):
        ex.run(cfg, tmp_path)
    out = ex.run_one(cfg.to_dict(), tmp_path)
    assert out["status"] == "failed" and "bad data" in out["error"]
    assert read_json(tmp_path / cfg.run_id / "results.json")["status"] != "diverged"


def test_measure_at_does_not_need_measure_every() -> None:
    X = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Y = torch.nn.functional.one_hot(torch.arange(16) % 3, 3).double()
    r = train.train(_net(), X, Y, steps=50, measure_at=[10, 20], measure=None, progress=False,
                    batch_size=4)  # fmt: skip
    assert [rec["step"] for rec in r.records] == [0, 10, 20, 50]
    with pytest.raises(ValueError, match=r"measure_at entries must be integers in 0..50"):
        train.train(_net(), X, Y, steps=50, measure_at=[60], measure=None, progress=False,
                    batch_size=4)


def test_lock_file_lives_outside_the_run_folder(tmp_path: Path) -> None:
    cfg = tiny(steps=10, measures=())
    ex.run(cfg, tmp_path)
    assert ex.lock_path(tmp_path, cfg.run_id).is_file()
    assert sorted(p.name for p in (tmp_path / cfg.run_id).iterdir()) == [
        "checkpoint.pt", "config.json", "results.json"]
    assert [i.run_id for i in ex.inspect_store(tmp_path)] == [cfg.run_id]
    time.sleep(0)  # (no timing in tests)


def test_a_study_computed_elsewhere_renders_flagged_but_is_never_mixed(tmp_path: Path) -> None:
    from flatbook import analysis

    s = analysis.get_setting("digits-mlp")
    cfgs = analysis.study_configs("digits-mlp", lrs=[0.1], batch_sizes=[8], seeds=[0, 1],
                                  steps=20, measure_every=10, n_train=60, eval_size=16,
                                  model_kw={"hidden": [6]})  # fmt: skip
    runs = analysis.obtain(cfgs, s, tmp_path)
    for r in runs:  # as if computed on a GPU machine
        p = r.run_dir / "results.json"
        doc = read_json(p)
        doc["numerics"]["device"] = "cuda:NVIDIA H200"
        write_json(p, _io.seal(doc))
    with pytest.warns(ex.NumericsWarning, match=r"device: cuda:NVIDIA H200 ≠ cpu"):
        shown = analysis.obtain(cfgs, s, tmp_path, compute_missing=False)
    assert [r.final for r in shown] == [r.final for r in runs]
    assert all(r.numerics_mismatch == ["device: cuda:NVIDIA H200 ≠ cpu"] for r in shown)
    # one of them recomputed here, the other from the GPU: refused, naming the field
    (runs[1].run_dir / "results.json").unlink()
    with pytest.warns(ex.NumericsWarning), pytest.raises(
            ex.NumericsMismatchError, match=r"different numerics \(device: cuda:NVIDIA H200 ≠ cpu"):
        analysis.obtain(cfgs, s, tmp_path)
