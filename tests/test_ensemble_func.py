"""The torch.func ensemble engine (any nn.Sequential model; LeNet-5 on 8×8 digits here):
agreement with the solo loop in float64, independence of a diverged member, interrupt and
kill −9 resume, and the dispatch between the two ensemble steps."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from flatbook import ensemble as EN
from flatbook import ensemble_func as EF
from flatbook import ensemble_runs as R
from flatbook import experiment as E
from flatbook import models

ROOT = Path(__file__).resolve().parents[1]
BASE = E.RunConfig(model="lenet5", dataset="digits", n_train=64, eval_size=16, steps=12,
                   measure_every=4, schedule="linear", dtype="float64", measures=("trace",),
                   progress=False, checkpoint_every=None, batch_size=8)


def _cfgs(base: E.RunConfig = BASE) -> list[E.RunConfig]:
    return [base.replace(seed=s, data_seed=s, lr=lr, label_noise=ln)
            for s, lr, ln in [(0, 0.1, 0.0), (1, 0.3, 0.05), (2, 0.2, 0.0)]]


def _same_records(a: E.Results, b: E.Results) -> bool:
    return a.records == b.records and a.status == b.status


def test_lenet_member_agrees_with_solo_run_in_float64(tmp_path: Path) -> None:
    cfgs = _cfgs()
    assert {R.step_engine(c) for c in cfgs} == {"vmap"}
    solo = [E.run(c, tmp_path / "solo") for c in cfgs]
    ens = R.run_ensemble(cfgs, tmp_path / "ens")
    for s, e in zip(solo, ens, strict=True):
        assert e.run_dir.name == s.run_dir.name and e.status == s.status == "completed"
        assert [r.keys() for r in e.records] == [r.keys() for r in s.records]
        assert e.records[0] == s.records[0]                      # initialisation: identical
        assert len(e.records) == 4
        for rs, re_ in zip(s.records[1:], e.records[1:], strict=True):   # steps 4, 8, 12
            assert rs["train_loss"] != s.records[0]["train_loss"]        # training moved it
            for k, v in rs.items():
                assert math.isclose(v, re_[k], rel_tol=1e-12, abs_tol=1e-14), (k, v, re_[k])
        for ps, pe in zip(s.load_model().parameters(), e.load_model().parameters(),
                          strict=True):
            torch.testing.assert_close(ps, pe, rtol=1e-12, atol=1e-14)
        assert e.numerics == {**s.numerics, "engine": "ensemble", "ensemble_step": "vmap"}


def test_a_diverged_lenet_member_stops_alone(tmp_path: Path) -> None:
    cfgs = _cfgs()
    cfgs[0] = cfgs[0].replace(lr=1e4)
    res = R.run_ensemble(cfgs, tmp_path / "a")
    assert res[0].status == "diverged" and res[0].data["diverged_at"] < BASE.steps
    ref = R.run_ensemble(cfgs[1:], tmp_path / "b")
    assert [r.status for r in ref] == ["completed", "completed"]
    assert all(_same_records(x, y) for x, y in zip(res[1:], ref, strict=True))


def test_interrupt_then_resume_gives_the_same_numbers(tmp_path: Path) -> None:
    cfgs = _cfgs(BASE.replace(checkpoint_every=4, steps=16, measures=()))
    ref = R.run_ensemble(cfgs, tmp_path / "ref")

    def stop(steps: list[int]) -> None:
        if min(steps) == 7:
            raise KeyboardInterrupt("simulated")

    with pytest.raises(KeyboardInterrupt):
        R.run_ensemble(cfgs, tmp_path / "x", callback=stop)
    again = R.run_ensemble(cfgs, tmp_path / "x")
    assert [r.data["provenance"]["resumed_from"] for r in again] == [7, 7, 7]
    assert all(_same_records(a, b) for a, b in zip(again, ref, strict=True))


_KILL_SCRIPT = """
import sys, time
from flatbook import experiment as E, ensemble_runs as R
cfgs = [E.RunConfig(**c) for c in {cfgs!r}]
def slow(steps):
    time.sleep(0.02)
R.run_ensemble(cfgs, sys.argv[1], callback=slow)
"""


def test_kill_9_mid_lenet_ensemble_then_rerun_is_bit_identical(tmp_path: Path) -> None:
    cfgs = _cfgs(BASE.replace(checkpoint_every=5, steps=120, measure_every=60, measures=()))
    kw = [{**c.to_dict(), "measures": ()} for c in cfgs]
    script = tmp_path / "ens.py"
    script.write_text(_KILL_SCRIPT.format(cfgs=kw))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "x")], env=env)
    prev = [E.run_dir_for(c, tmp_path / "x") / "checkpoint.prev.pt" for c in cfgs]
    deadline = time.time() + 120
    while not all(p.exists() for p in prev) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert all(p.exists() for p in prev), "no checkpoint before the kill"
    assert not any((p.parent / "results.json").exists() for p in prev), "killed too late"
    ref = R.run_ensemble(cfgs, tmp_path / "ref")
    again = R.run_ensemble(cfgs, tmp_path / "x")   # resumes every member from its checkpoint
    assert all(r.data["provenance"]["resumed_from"] for r in again)
    assert all(_same_records(a, b) for a, b in zip(again, ref, strict=True))


def test_vmap_step_agrees_with_the_hand_batched_mlp_step() -> None:
    nets = [models.mlp([5, 7, 3], seed=s, dtype=torch.float64) for s in range(3)]
    g = torch.Generator().manual_seed(0)
    xb = torch.randn(3, 4, 5, dtype=torch.float64, generator=g)
    yb = torch.randn(3, 4, 3, dtype=torch.float64, generator=g)
    lr = torch.tensor([0.1, 0.0, 0.3], dtype=torch.float64)
    wd = torch.tensor([0.0, 0.01, 0.02], dtype=torch.float64)
    for loss in EN.LOSSES:
        mlp_stack, func_stack = EN._Stack(nets), EF.FuncStack(nets)
        a = EN.batched_step(mlp_stack, xb, yb, lr, wd, loss)
        b = EF.make_step(func_stack, loss)(xb, yb, lr, wd)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        for layer, name in enumerate(mlp_stack.names):
            torch.testing.assert_close(mlp_stack.W[layer], func_stack.params[f"{name}.weight"],
                                       rtol=1e-12, atol=1e-14)
        assert torch.equal(func_stack.params["0.weight"][1], nets[1][0].weight)   # η = 0


def test_dispatch_between_the_two_ensemble_steps() -> None:
    mlp = E.RunConfig()
    assert R.step_engine(mlp) == "mlp" and R.unsupported(mlp) is None
    gelu = mlp.replace(model_kw={"hidden": [8], "activation": "gelu"})
    assert R.step_engine(gelu) == "vmap" and R.unsupported(gelu) is None
    assert R.step_engine(BASE) == "vmap" and R.unsupported(BASE) is None
    assert "BatchNorm" in (R.unsupported(BASE.replace(model="vgg11", model_kw={
        "batch_norm": True})) or "")
    assert R.unsupported(BASE.replace(momentum=0.9)) is not None
    groups = R.plan_groups([mlp, BASE, mlp.replace(seed=1), BASE.replace(seed=1)])
    assert sorted(groups) == [[0, 2], [1, 3]]        # one step engine per ensemble


def test_func_problem_names_what_the_batched_step_cannot_do() -> None:
    assert EF.func_problem(models.lenet5((1, 8, 8), 10, seed=0)) is None
    assert "Dropout" in (EF.func_problem(nn.Sequential(nn.Linear(2, 2), nn.Dropout())) or "")
    assert "BatchNorm1d" in (EF.func_problem(nn.Sequential(nn.Linear(2, 2),
                                                           nn.BatchNorm1d(2))) or "")
    assert "nn.Sequential" in (EF.func_problem(nn.Linear(2, 2)) or "")
    with pytest.raises(ValueError, match="engine='solo'"):
        EF.FuncStack([nn.Sequential(nn.Linear(2, 2), nn.Dropout())])
    with pytest.raises(ValueError, match="same architecture"):
        EF.FuncStack([models.mlp([2, 3, 2]), models.mlp([2, 4, 2])])


def test_extended_study_is_powered_balanced_and_new() -> None:
    from flatbook.analysis import settings as S

    for name, step in (("digits-lenet", "vmap"), ("mnist1d-mlp", "mlp")):
        s = S.SETTINGS[name]
        assert s is S.EXTENDED[name] and s.independent and s.loss_threshold == 1e-3
        assert (len(s.lrs), len(s.batch_sizes), len(s.seeds)) == (3, 2, 6)
        cfgs = S.study_configs(name)
        assert len(cfgs) == 36 and len({(c.seed, c.data_seed) for c in cfgs}) == 36
        assert {R.step_engine(c) for c in cfgs} == {step}
        assert all(R.unsupported(c) is None for c in cfgs)
        pilot = S.PILOT_EXTENDED[name]
        try:
            S.SETTINGS["pilot-x"] = pilot
            old = {c.seed for c in S.study_configs("pilot-x", seeds=range(6))}
        finally:
            S.SETTINGS.pop("pilot-x")
        powered = {c.seed for c in S.study_configs("digits-mlp")}
        assert not {c.seed for c in cfgs} & (old | powered)
        assert sorted(map(len, R.plan_groups(cfgs, min_groups=2))) == [18, 18]   # one per B


def test_member_memory_of_the_vmap_step_counts_every_activation() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    # data 10·(3 + 2), parameters 4 × 26, activations 3 × 5 × (4 + 4 + 2); float32
    assert EF.activation_bytes(net, (3,), 5, 10) == 4 * (50 + 4 * 26 + 3 * 5 * 10)
    vgg = BASE.replace(model="vgg11", dataset="cifar10", n_train=1000, batch_size=128,
                       dtype="float32")
    mlp_formula = 4 * (1000 * (3072 + 10) + 4 * 3073 * 10 + 3 * 128 * 3082)
    assert R.member_bytes(vgg, 1000, 3072, 10) > 20 * mlp_formula   # conv activations count
