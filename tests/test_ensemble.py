"""The ensemble engine: agreement with the solo loop, independence of members, the store's
guarantees (run ids, fingerprint, kill −9 resume), grouping, and sweeps from plain scripts."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from flatbook import ensemble as EN
from flatbook import ensemble_runs as R
from flatbook import experiment as E

ROOT = Path(__file__).resolve().parents[1]
BASE = E.RunConfig(model_kw={"hidden": [12, 12]}, n_train=80, eval_size=40, steps=40,
                   measure_every=10, schedule="linear", dtype="float64", measures=("trace",),
                   progress=False, checkpoint_every=None, batch_size=8)


def _cfgs(base: E.RunConfig = BASE) -> list[E.RunConfig]:
    return [base.replace(seed=s, data_seed=s, lr=lr, label_noise=ln)
            for s, lr, ln in [(0, 0.1, 0.0), (1, 0.3, 0.05), (2, 0.2, 0.0)]]


def _same_records(a: E.Results, b: E.Results) -> bool:
    return a.records == b.records and a.status == b.status


def test_member_agrees_with_solo_run_in_float64(tmp_path: Path) -> None:
    """A member and the solo run of its config (float64): same run id, same record keys,
    identical records at initialisation, records and weights equal to rounding after
    training; the fingerprint says which engine."""
    cfgs = _cfgs()
    solo = [E.run(c, tmp_path / "solo") for c in cfgs]
    ens = R.run_ensemble(cfgs, tmp_path / "ens")
    for s, e in zip(solo, ens, strict=True):
        assert e.config.run_id == s.config.run_id and e.run_dir.name == s.run_dir.name
        assert [r.keys() for r in e.records] == [r.keys() for r in s.records]
        assert e.records[0] == s.records[0]                      # initialisation: identical
        for rs, re_ in zip(s.records, e.records, strict=True):   # later steps: to rounding
            for k, v in rs.items():
                assert math.isclose(v, re_[k], rel_tol=1e-12, abs_tol=1e-14), (k, v, re_[k])
        for ps, pe in zip(s.load_model().parameters(), e.load_model().parameters(),
                          strict=True):
            torch.testing.assert_close(ps, pe, rtol=1e-12, atol=1e-14)
        assert e.numerics == {**s.numerics, "engine": "ensemble"}
        assert "engine" not in s.numerics


def test_member_numbers_do_not_depend_on_the_other_members(tmp_path: Path) -> None:
    """A member's records are bit-identical whether it trains alone or beside others."""
    cfgs = _cfgs(BASE.replace(dtype="float32"))
    together = R.run_ensemble(cfgs, tmp_path / "a")
    alone = R.run_ensemble(cfgs[1:2], tmp_path / "b")
    assert _same_records(together[1], alone[0])


def test_a_diverged_member_stops_alone(tmp_path: Path) -> None:
    """A member that diverges stops; the others' numbers are those of an ensemble without
    it."""
    cfgs = _cfgs()
    cfgs[0] = cfgs[0].replace(lr=50.0)
    res = R.run_ensemble(cfgs, tmp_path / "a")
    assert res[0].status == "diverged" and res[0].data["diverged_at"] < BASE.steps
    ref = R.run_ensemble(cfgs[1:], tmp_path / "b")
    assert all(_same_records(x, y) for x, y in zip(res[1:], ref, strict=True))
    assert [r.status for r in ref] == ["completed", "completed"]


def test_interrupt_then_resume_gives_the_same_numbers(tmp_path: Path) -> None:
    """An interrupt checkpoints every member; the rerun resumes them and gives the
    uninterrupted numbers."""
    cfgs = _cfgs(BASE.replace(checkpoint_every=5, steps=60))
    ref = R.run_ensemble(cfgs, tmp_path / "ref")

    def stop(steps: list[int]) -> None:
        if min(steps) == 23:
            raise KeyboardInterrupt("simulated")

    with pytest.raises(KeyboardInterrupt):
        R.run_ensemble(cfgs, tmp_path / "x", callback=stop)
    assert not any((E.run_dir_for(c, tmp_path / "x") / "results.json").exists() for c in cfgs)
    again = R.run_ensemble(cfgs, tmp_path / "x")
    assert [r.data["provenance"]["resumed_from"] for r in again] == [23, 23, 23]
    assert all(_same_records(a, b) for a, b in zip(again, ref, strict=True))


_KILL_SCRIPT = """
import sys, time
from flatbook import experiment as E, ensemble_runs as R
cfgs = [E.RunConfig(**c) for c in {cfgs!r}]
def slow(steps):
    time.sleep(0.01)
R.run_ensemble(cfgs, sys.argv[1], callback=slow if len(sys.argv) > 2 else None)
"""


def _cfg_kwargs(c: E.RunConfig) -> dict:
    d = c.to_dict()
    d["measures"] = tuple(d["measures"])
    return d


def test_kill_9_mid_ensemble_then_rerun_is_bit_identical(tmp_path: Path) -> None:
    """kill −9 mid-ensemble, then rerun: every member resumes from its checkpoint and ends
    bit-identical to an uninterrupted ensemble."""
    cfgs = _cfgs(BASE.replace(checkpoint_every=10, steps=200, measure_every=50))
    script = tmp_path / "ens.py"
    script.write_text(_KILL_SCRIPT.format(cfgs=[_cfg_kwargs(c) for c in cfgs]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "x"), "slow"], env=env)
    ckpts = [E.run_dir_for(c, tmp_path / "x") / "checkpoint.prev.pt" for c in cfgs]
    deadline = time.time() + 60
    while not all(p.exists() for p in ckpts) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert all(p.exists() for p in ckpts), "no checkpoint before the kill"
    assert not any((p.parent / "results.json").exists() for p in ckpts), "killed too late"
    ref = R.run_ensemble(cfgs, tmp_path / "ref")
    again = R.run_ensemble(cfgs, tmp_path / "x")   # resumes every member from its checkpoint
    assert all(r.data["provenance"]["resumed_from"] for r in again)
    assert all(_same_records(a, b) for a, b in zip(again, ref, strict=True))


def test_study_never_mixes_engines(tmp_path: Path) -> None:
    """A solo run and an ensemble member in one study are refused (their numerics
    fingerprints differ by engine), and a member is not resumed by the solo loop."""
    c0, c1 = _cfgs()[:2]
    solo = E.run(c0, tmp_path)
    (ens,) = R.run_ensemble([c1], tmp_path)
    with pytest.raises(E.NumericsMismatchError, match="engine: solo ≠ ensemble"):
        E.check_numerics([solo, ens])
    (E.run_dir_for(c1, tmp_path) / "results.json").unlink()   # config.json + checkpoint left
    with pytest.raises(E.NumericsMismatchError, match="engine"):   # no solo resume of a member
        E.run(c1, tmp_path)


def test_plan_groups_keeps_incompatible_runs_apart() -> None:
    """Grouping: incompatible configs apart, groups capped and split for the workers,
    unsupported configs left out."""
    a = _cfgs()
    b = [c.replace(batch_size=16) for c in a]
    adam = a[0].replace(optimizer="adam", seed=9)
    groups = R.plan_groups([*a, *b, adam], size=2)
    assert sorted(map(sorted, groups)) == [[0, 2], [1], [3, 5], [4]]
    assert R.unsupported(adam) is not None
    assert R.plan_groups(a, min_groups=2) == [[0, 2], [1]]
    assert R.max_members(10, available=400) == 10 and R.max_members(10**12) >= 1


def test_obtain_shares_every_kind_of_run_among_the_workers() -> None:
    """With 2 workers, 8 runs at B = 8 and 8 at B = 16 become 4 ensembles of 4 (each worker
    gets a share of both batch sizes), the larger batch size first; 1 worker: 2 ensembles."""
    from flatbook.analysis import store as ST

    cfgs = [BASE.replace(seed=s, data_seed=s, batch_size=b) for b in (8, 16) for s in range(8)]
    todo = [(i, c, False) for i, c in enumerate(cfgs)]
    jobs = ST._jobs(todo, "ensemble", 2)
    assert [len(j) for j in jobs] == [4, 4, 4, 4]
    assert [j[0][1].batch_size for j in jobs] == [16, 16, 8, 8]
    assert sorted(i for j in jobs for i, _, _ in j) == list(range(16))
    assert all(len({c.batch_size for _, c, _ in j}) == 1 for j in jobs)
    assert [len(j) for j in ST._jobs(todo, "ensemble", 1)] == [8, 8]
    assert len(ST._jobs(todo, "solo", 2)) == 16


def test_mlp_layout_rejects_what_the_step_does_not_implement() -> None:
    """Architectures the batched step does not implement are refused with the way out
    (engine='solo')."""
    from flatbook import models

    net = models.mlp([4, 3, 2], activation="gelu")
    with pytest.raises(ValueError, match="engine='solo'"):
        EN.mlp_layout(net)
    assert EN.mlp_layout(models.mlp([4, 3, 3, 2]))[1:] == ("relu", True)


def test_sweep_from_a_plain_script_without_main_guard(tmp_path: Path) -> None:
    """A sweep from a plain script without a __main__ guard runs in-process and says how to
    use workers."""
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent("""
        import sys
        from flatbook import analysis as A
        cfgs = A.study_configs("digits-mlp", lrs=[0.2], batch_sizes=[8], seeds=[0, 1],
                               steps=4, n_train=40, model_kw={"hidden": [4]}, measure_every=2)
        res = A.obtain(cfgs, A.get_setting("digits-mlp-label-noise"), sys.argv[1], workers=2)
        print("statuses", [r.status for r in res])
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "statuses ['completed', 'completed']" in out.stdout
    assert "without an `if __name__" in out.stderr


def test_powered_digits_design_is_balanced_new_and_paired() -> None:
    """The powered default design: balanced 3 η × 2 B × 6, new seeds, twins paired with the
    plain runs."""
    from flatbook.analysis import settings as S

    plain, noisy = S.POWERED_DIGITS["digits-mlp"], S.POWERED_DIGITS["digits-mlp-label-noise"]
    assert S.SETTINGS["digits-mlp"] is plain              # the default since R9's freeze
    assert S.SETTINGS["digits-mlp-label-noise"] is noisy
    assert len(plain.lrs) == 3 and len(plain.batch_sizes) == 2 and len(plain.seeds) == 6
    assert plain.loss_threshold == 1e-3 and plain.base["eval_size"] == plain.base["n_train"]
    assert noisy.paired_with == "digits-mlp" and noisy.profile == "curvature"
    pilot = S.PILOT_DIGITS["digits-mlp"]   # the 12-run store analysed before the plan
    try:
        S.SETTINGS["pilot-digits-mlp"] = pilot
        old = {c.seed for c in S.study_configs("pilot-digits-mlp")} | \
            {c.seed for c in S.study_configs("pilot-digits-mlp", seeds=range(6))}
    finally:
        S.SETTINGS.pop("pilot-digits-mlp")
    new = S.study_configs("digits-mlp")
    twins = S.study_configs("digits-mlp-label-noise")
    assert len(new) == 36 and len({(c.seed, c.data_seed) for c in new}) == 36
    assert not {c.seed for c in new} & old
    assert [(c.lr, c.batch_size, c.seed) for c in new] == \
        [(c.lr, c.batch_size, c.seed) for c in twins]
    assert all(c.label_noise == noisy.label_noise for c in twins)
    assert R.plan_groups(new, min_groups=2) and all(R.unsupported(c) is None for c in new)


def test_curvature_profile_records_the_reports_curvature_keys() -> None:
    """The curvature profile records the report's λ_max and tr H keys with the same values."""
    from flatbook import analysis as A
    from flatbook import models

    cfg = BASE
    net = models.mlp([5, 6, 3], seed=0, dtype=torch.float64)
    X = torch.randn(20, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Y = torch.nn.functional.one_hot(torch.arange(20) % 3, 3).double()
    light = A.store.make_curvature_measure(cfg)(net, X, Y, "squared", 0)
    full = A.make_measure(cfg, X, Y, 0, "none", n_train=20)(net, X, Y, "squared", 0)
    assert math.isclose(light["trace_gn"], full["trace_gn"], rel_tol=1e-10)
    assert math.isclose(light["lambda_max"], full["lambda_max"], rel_tol=1e-3)


def test_sparse_hidden_profile_is_the_same_in_both_engines(tmp_path: Path) -> None:
    """The sparse hidden-layer profile records the same keys and values in both engines."""
    from flatbook import analysis as A

    cfg = BASE.replace(steps=20, measure_every=5)
    ds = E.prepare(cfg)[0]
    full = A.make_measure(cfg, ds.X_test, ds.Y_test, 0, "hidden", n_train=ds.n_train)
    light = A.make_measure(cfg, ds.X_test, ds.Y_test, 0, "none", n_train=ds.n_train)
    m = A.store.sparse_hidden(full, light, 10)
    solo = E.run(cfg, tmp_path / "solo", measure=m)
    (ens,) = R.run_ensemble([cfg], tmp_path / "ens", measure_for=lambda c, d: m)
    for res in (solo, ens):
        extra = [set(r) - set(res.records[1]) for r in res.records]
        assert [bool(x) for x in extra] == [True, False, True, False, True]   # steps 0, 10, 20
    assert [r.keys() for r in solo.records] == [r.keys() for r in ens.records]


def test_starting_a_member_over_moves_its_stored_run_aside(tmp_path: Path) -> None:
    """Starting a member over moves its stored run aside, never deletes it."""
    cfgs = _cfgs()[:2]
    R.run_ensemble(cfgs, tmp_path)
    old = (E.run_dir_for(cfgs[0], tmp_path) / "results.json").read_bytes()
    with pytest.warns(UserWarning):
        R.run_ensemble(cfgs, tmp_path, overwrite=[True, False])
    aside = list((tmp_path / "stale").glob(f"{cfgs[0].run_id}-*/results.json"))
    assert len(aside) == 1 and aside[0].read_bytes() == old   # kept byte for byte
    assert not list((tmp_path / "stale").glob(f"{cfgs[1].run_id}-*"))
    assert (E.run_dir_for(cfgs[0], tmp_path) / "results.json").is_file()   # recomputed


def test_obtain_with_the_solo_engine_trains_by_the_solo_loop(tmp_path: Path) -> None:
    """``obtain(..., engine="solo")`` computes a run the ensemble engine could train by the
    solo loop (no ``engine`` in its fingerprint), not as an ensemble of one."""
    from flatbook import analysis as A

    cfg = BASE.replace(dtype="float32")
    (solo,) = A.obtain([cfg], A.get_setting("digits-mlp-label-noise"), tmp_path / "s",
                       workers=1, engine="solo")
    (ens,) = A.obtain([cfg], A.get_setting("digits-mlp-label-noise"), tmp_path / "e",
                      workers=1, engine="ensemble")
    assert "engine" not in solo.numerics and ens.numerics.get("engine") == "ensemble"
