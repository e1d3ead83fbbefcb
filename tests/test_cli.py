"""Command line: help (defaults), run / rerun / show (table, CSV, JSON, every status) / plot,
sweeps over a grid, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flatbook import experiment as ex
from flatbook.__main__ import main

TINY = ["--n-train", "40", "--n-test", "20", "--classes", "0", "1", "2", "--model-kw",
        "hidden=[6]", "--steps", "20", "--measure-every", "10", "--schedule", "linear",
        "--eval-size", "12", "--measures", "sharpness", "trace", "--no-progress",
        "--checkpoint-every", "none"]  # fmt: skip


def test_module_entry_point_help() -> None:
    out = subprocess.run([sys.executable, "-m", "flatbook", "--help"], capture_output=True,
                         text=True, timeout=120, check=True).stdout  # fmt: skip
    assert "usage: flatbook" in out and "run" in out and "sweep" in out


@pytest.mark.parametrize("cmd", ["run", "sweep", "show"])
def test_subcommand_help(cmd: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: flatbook {cmd}" in out
    if cmd == "sweep":
        assert "--lr LR [LR ...]" in out and "--batch-size BATCH_SIZE [BATCH_SIZE ...]" in out


def test_run_rerun_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["run", *TINY, "--lr", "0.1", "--batch-size", "8", "--results-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    cfg = ex.RunConfig(n_train=40, n_test=20, classes=(0, 1, 2), model_kw={"hidden": [6]},
                       steps=20, measure_every=10, schedule="linear", eval_size=12,
                       measures=("sharpness", "trace"), lr=0.1, batch_size=8)  # fmt: skip
    assert cfg.run_id in out and "completed" in out and "lambda_max=" in out
    results = tmp_path / cfg.run_id / "results.json"
    first = results.read_bytes()
    assert main(args) == 0  # the same command again: finished, not recomputed
    assert results.read_bytes() == first
    capsys.readouterr()
    assert main(["show", str(tmp_path)]) == 0
    assert cfg.run_id in capsys.readouterr().out
    # --config: a stored config.json reproduces the same run id
    assert main(["run", "--config", str(tmp_path / cfg.run_id / "config.json"),
                 "--results-dir", str(tmp_path), "--no-progress"]) == 0  # fmt: skip
    assert cfg.run_id in capsys.readouterr().out


def test_sweep_grid_with_an_absurd_learning_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sweep", *TINY, "--lr", "0.1", "1e5", "--batch-size", "4", "8",
                 "--results-dir", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "4 runs: completed 2, diverged 2, failed 0" in out
    docs = [json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")]
    assert sorted((d["config"]["lr"], d["config"]["batch_size"], d["status"]) for d in docs) == [
        (0.1, 4, "completed"), (0.1, 8, "completed"),
        (1e5, 4, "diverged"), (1e5, 8, "diverged"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "param"),
    [
        (["run", "--model", "resnet"], "model"),
        (["run", "--lr", "-0.1"], "lr"),
        (["run", "--batch-size", "0"], "batch_size"),
        (["run", "--batch-size", "5000"], "batch_size"),
        (["run", "--optimizer", "lbfgs"], "optimizer"),
        (["run", "--steps", "10", "--epochs", "3"], "epochs"),
        (["run", "--model-kw", "depth=3"], "model_kw"),
        (["run", "--measures", "volume"], "measure"),
        (["sweep", "--lr", "0.1", "0", "--steps", "10", "--measure-every", "5"], "lr"),
        (
            ["sweep", "--batch-size", "8", "4000", "--steps", "10", "--measure-every", "5"],
            "batch_size",
        ),
        (["run", "--lr", "abc"], "--lr"),
    ],
)
def test_bad_parameters_exit_2_with_one_line(
    args: list[str], param: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main([*args, "--results-dir", str(tmp_path), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert param in err[-1] and "error" in err[-1]
    assert not any(tmp_path.iterdir())  # nothing was started


# ------------------------------------------------------------------------- show and plot


def _store_with_every_status(tmp_path: Path) -> dict[str, str]:
    """Two completed runs, one diverged, one interrupted, one damaged: {run_id: status}."""
    base = ["run", *TINY, "--batch-size", "8", "--results-dir", str(tmp_path)]
    ids = {}
    for lr, want in (("0.1", "completed"), ("0.05", "completed"), ("1e5", "diverged")):
        assert main([*base, "--lr", lr]) == 0
        ids[ex.RunConfig(**_tiny_fields(lr=float(lr))).run_id] = want
    cfg = ex.RunConfig(**_tiny_fields(lr=0.2))

    def stop(step: int, model: object, rec: object) -> None:
        if step == 7:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        ex.run(cfg, tmp_path, callback=stop)
    ids[cfg.run_id] = "interrupted"
    bad = ex.RunConfig(**_tiny_fields(lr=0.3))
    ex.run(bad, tmp_path)
    (tmp_path / bad.run_id / "results.json").write_text('{"status": "compl')  # truncated
    ids[bad.run_id] = "damaged"
    return ids


def _tiny_fields(**kw: Any) -> dict[str, Any]:
    return dict(n_train=40, n_test=20, classes=(0, 1, 2), model_kw={"hidden": [6]}, steps=20,
                measure_every=10, schedule="linear", eval_size=12,
                measures=("sharpness", "trace"), batch_size=8, **kw)  # fmt: skip


def test_show_table_csv_json_sort_and_filter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _store_with_every_status(tmp_path)
    capsys.readouterr()
    assert main(["show", str(tmp_path), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["run_id"]: r["status"] for r in rows} == ids  # one row per run, all statuses
    assert {"lambda_max", "trace_gn", "test_acc", "numerics_threads", "note"} <= set(rows[0])
    inter = next(r for r in rows if r["status"] == "interrupted")
    assert inter["step"] == "7" and inter["steps"] == "20"
    dmg = next(r for r in rows if r["status"] == "damaged")
    assert "results.json" in dmg["note"] and "--restart" in dmg["note"]
    # table: a header, a rule, one aligned line per run
    assert main(["show", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["run", "id", "status"] and set(lines[1]) <= {"-", " "}
    col = lines[0].index("status")
    assert all(line[col - 2 : col] == "  " for line in lines[2 : 2 + len(ids)])
    assert [line[col:].split()[0] for line in lines[2 : 2 + len(ids)]] == [
        ids[k] for k in sorted(ids)]
    # json, sorted by λ_max descending (runs without it last), filtered
    assert main(["show", str(tmp_path), "--format", "json", "--sort=-lambda_max",
                 "--filter", "status=completed"]) == 0  # fmt: skip
    got = json.loads(capsys.readouterr().out)
    lam = [r["lambda_max"] for r in got]
    assert len(got) == 2 and lam == sorted(lam, reverse=True)
    assert main(["show", str(tmp_path), "--format", "csv", "--filter", "lr<0.09"]) == 0
    assert [r["lr"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))] == ["0.05"]


@pytest.mark.parametrize("where", ["missing", "file"])
def test_show_on_a_missing_or_wrong_path_exits_nonzero(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nope"
    if where == "file":
        path.write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["show", str(path)])
    assert e.value.code == 2 and str(path) in capsys.readouterr().err


def test_show_rejects_an_unknown_sort_or_filter_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", *TINY, "--results-dir", str(tmp_path), "--batch-size", "8"]) == 0
    for args, says in ((["--sort", "nonsense"], "unknown key 'nonsense'"),
                       (["--filter", "nonsense=1"], "unknown key 'nonsense'"),
                       (["--filter", "lr"], "expected KEY OP VALUE")):
        with pytest.raises(SystemExit) as e:
            main(["show", str(tmp_path), *args])
        assert e.value.code == 2 and says in capsys.readouterr().err


def test_plot_writes_a_png_of_trajectories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for lr in ("0.1", "0.05"):
        assert main(["run", *TINY, "--lr", lr, "--batch-size", "8", "--results-dir",
                     str(tmp_path)]) == 0  # fmt: skip
    out = tmp_path / "fig" / "t.png"
    assert main(["plot", str(tmp_path), "--keys", "lambda_max", "train_loss", "--out",
                 str(out)]) == 0  # fmt: skip
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "2 runs" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["plot", str(tmp_path), "--keys", "volume", "--out", str(out)])
    assert e.value.code == 2 and "volume" in capsys.readouterr().err


# ------------------------------------------------------------------------- inputs and help


@pytest.mark.parametrize(
    ("args", "param"),
    [
        (["--model-kw", "hidden=[12.5]"], "model_kw hidden"),
        (["--n-train", "100", "--eval-size", "100000"], "eval_size"),
        (["--checkpoint-every", "0"], "--checkpoint-every"),
        (["--checkpoint-every", "-3"], "--checkpoint-every"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_listed_bad_inputs_exit_2_naming_the_parameter(
    args: list[str], param: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", *args, "--steps", "10", "--measure-every", "5", "--results-dir",
              str(tmp_path), "--no-progress"])  # fmt: skip
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert param in err[-1] and "error" in err[-1] and "empty()" not in err[-1]
    assert not any(tmp_path.iterdir())


def test_help_gives_every_option_a_line_and_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    def block(opt: str) -> str:  # the option's help text, joined over its lines
        return " ".join(out.split("\n  " + opt, 1)[1].split("\n  -", 1)[0].split())

    for opt, default in (("--lr LR", "0.2"),
                         ("--batch-size BATCH_SIZE", "32, or n_train if smaller"),
                         ("--measure-every MEASURE_EVERY", "1000, or steps if smaller"),
                         ("--eval-size EVAL_SIZE", "256, or n_train if smaller"),
                         ("--n-train N_TRAIN", "all"),
                         ("--checkpoint-every CHECKPOINT_EVERY", "2000")):  # fmt: skip
        assert f"(default: {default})" in block(opt), (opt, block(opt))
    options = [ln.split()[0] for ln in out.splitlines() if ln.startswith("  --")]
    assert len(options) > 25
    for o in options:  # each option has help text (argparse puts it on the same or next line)
        assert "default" in block(o), o


# ------------------------------------------------------------------------- run flags
# (the run parameters' flags are generated from flatbook.runspec.PARAMS)


def test_every_run_parameter_has_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from flatbook import runspec

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    flags = {ln.split()[0] for ln in out.splitlines() if ln.startswith("  --")}
    assert {p.flag for p in runspec.PARAMS if p.cli is not None} <= flags
    assert {"--optimizer", "--momentum", "--threads", "--label-noise"} <= flags


def test_run_n_train_200_with_every_other_flag_at_its_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``run --n-train 200``: the defaults that depend on n_train adapt (eval_size 256 → 200)
    and the run starts training (stopped after 2 steps here: a default run is 30000 steps)."""
    real, seen = ex.run, []

    def run_two_steps(cfg: ex.RunConfig, results_dir: Path, overwrite: bool = False) -> Any:
        seen.append(cfg)

        def stop(step: int, model: object, rec: object) -> None:
            if step == 2:
                raise KeyboardInterrupt("stopped by the test")

        return real(cfg, results_dir, overwrite=overwrite, callback=stop)

    monkeypatch.setattr(ex, "run", run_two_steps)
    with pytest.raises(SystemExit) as e:
        main(["run", "--n-train", "200", "--results-dir", str(tmp_path)])
    assert e.value.code == 130 and "stopped by the test" in capsys.readouterr().err
    (cfg,) = seen
    assert cfg == ex.RunConfig(n_train=200) and cfg.eval_size == 200
    assert (tmp_path / cfg.run_id / "checkpoint.pt").is_file()  # it trained


def test_more_threads_than_cores_run_capped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flatbook import runspec

    cores = runspec.available_cores()
    with pytest.warns(runspec.CoresWarning) as notes:  # the CLI prints it as one line
        assert main(["run", *TINY, "--batch-size", "8", "--threads", "1000", "--results-dir",
                     str(tmp_path)]) == 0  # fmt: skip
    note = str(notes[0].message)
    assert f"threads=1000 exceeds the {cores} CPU core(s)" in note and f"using {cores}" in note
    (doc,) = [json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")]
    assert doc["numerics"]["threads"] == cores


@pytest.mark.parametrize(
    ("args", "flag", "says"),
    [
        (["--lr", "1e-320"], "--lr", "below 1e-08"),
        (["--lr", "nan"], "--lr", "positive finite"),
        (["--lr", "-0.5"], "--lr", "positive finite"),
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum", "--optimizer sgd"),
        (["--optimizer", "adam", "--momentum", "0"], "--momentum", "--optimizer sgd"),
        (["--optimizer", "adam", "--nesterov"], "--nesterov", "--optimizer sgd"),
        (["--epochs", "1e-9"], "--epochs", "whole number"),
        (["--epochs", "2.5"], "--epochs", "whole number"),
        (["--steps", "1.5"], "--steps", "invalid int"),
        (["--sharpness-tol", "1"], "--sharpness-tol", "(0, 1)"),
        (["--sharpness-tol", "0"], "--sharpness-tol", "(0, 1)"),
        (["--seed", "-1"], "--seed", "0..2**63-1"),
        (["--n-train", "200", "--eval-size", "300"], "--eval-size", "n_train=200"),
        (["--n-train", "20", "--batch-size", "32"], "--batch-size", "n_train=20"),
        (["--label-noise", "0.1", "--loss", "cross_entropy"], "--label-noise", "squared"),
        (["--label-noise", "-1"], "--label-noise", "≥ 0"),
        (["--weight-decay", "inf"], "--weight-decay", "finite"),
        (["--divergence-threshold", "0"], "--divergence-threshold", "positive"),
        (["--target-loss", "-1"], "--target-loss", "positive"),
        (["--steps", "100", "--measure-every", "200"], "--measure-every", "exceeds steps"),
        (["--dataset", "imagenet"], "--dataset", "allowed"),
        (["--classes", "1"], "--classes", "count ≥ 2"),
        (["--classes", "3", "3"], "--classes", "distinct"),
        (["--n-test", "0"], "--n-test", "positive integer"),
        (["--standardize", "zscore"], "--standardize", "allowed"),
        (["--data-seed", "-2"], "--data-seed", "0..2**63-1"),
        (["--loss", "hinge"], "--loss", "allowed"),
        (["--dtype", "float16"], "--dtype", "allowed"),
        (["--schedule", "cosine"], "--schedule", "allowed"),
        (["--device", "tpu"], "--device", "allowed"),
        (["--model-kw", "hidden=[0]"], "--model-kw", "positive integers"),
    ],
)
def test_run_flags_are_checked_against_their_meaning(
    args: list[str], flag: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", *args, "--results-dir", str(tmp_path), "--no-progress"])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in last and says in last and "error" in last, last
    assert not any(tmp_path.iterdir())  # nothing was started
