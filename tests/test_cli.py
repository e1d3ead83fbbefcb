"""Command line: help, run / rerun / show, sweeps over a grid, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
