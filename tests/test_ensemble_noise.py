"""The label noise ξ(seed, step) shared by the solo loop and the ensemble engine, and the
ensemble's per-member paths (members at different steps)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flatbook import ensemble_runs as R
from flatbook import experiment as E
from flatbook import label_noise as N
from flatbook import train

BASE = E.RunConfig(model_kw={"hidden": [12, 12]}, n_train=80, eval_size=40, steps=60,
                   measure_every=10, schedule="linear", dtype="float64", measures=("trace",),
                   progress=False, checkpoint_every=5, batch_size=8)


def test_xi_is_a_function_of_seed_and_step_in_blocks() -> None:
    """ξ(seed, step) is row step mod S of its block, the same on every call and in float32
    and float64 (float32 draws), different for another seed or step, ~N(0, 1)."""
    shape = (16, 10)
    S = N.block_steps(shape)
    assert S == N.MAX_BLOCK_STEPS
    a = N.xi(7, S + 3, shape)
    assert torch.equal(a, N.block(7, S + 5, shape)[3])
    assert torch.equal(a, N.xi(7, S + 3, shape))
    assert torch.equal(N.xi(7, S + 3, shape, torch.float64), a.double())
    assert not torch.equal(a, N.xi(8, S + 3, shape)) and not torch.equal(a, N.xi(7, S + 4, shape))
    draws = torch.stack([N.xi(1, s, shape) for s in range(4 * S)])
    assert abs(float(draws.mean())) < 0.05 and abs(float(draws.std()) - 1) < 0.05


def test_full_batch_blocks_stay_small_and_steps_must_be_natural() -> None:
    """A large minibatch draws fewer steps per block (at least one); a negative step is
    refused by name."""
    assert N.block_steps((60_000, 10)) == 1
    assert N.block_steps((600, 10)) == N.MAX_BLOCK_NUMEL // 6000
    assert tuple(N.block(0, 0, (600, 10)).shape) == (N.block_steps((600, 10)), 600, 10)
    with pytest.raises(ValueError, match="step"):
        N.xi(0, -1, (4, 2))


def test_solo_loop_draws_the_same_xi() -> None:
    """The solo loop's ξ is the shared one (same values, the targets' dtype and device)."""
    yb = torch.zeros(16, 10, dtype=torch.float64)
    assert torch.equal(train._label_noise(yb, 3, 100), N.xi(3, 100, (16, 10), torch.float64))


def test_members_at_different_steps_give_the_same_numbers(tmp_path: Path) -> None:
    """One member resumed from its checkpoint beside fresh members (so the members are not
    in step: per-member minibatch and noise draws, until they are in step again): every
    member's records are those of the ensemble run in step from the start."""
    cfgs = [BASE.replace(seed=s, data_seed=s, lr=lr, label_noise=ln)
            for s, lr, ln in [(0, 0.1, 0.0), (1, 0.3, 0.05), (2, 0.2, 0.0)]]
    ref = R.run_ensemble(cfgs, tmp_path / "ref")

    def stop(steps: list[int]) -> None:
        if steps[0] == 17:
            raise KeyboardInterrupt("simulated")

    with pytest.raises(KeyboardInterrupt):
        R.run_ensemble(cfgs[1:2], tmp_path / "x", callback=stop)
    again = R.run_ensemble(cfgs, tmp_path / "x")
    assert [r.data["provenance"]["resumed_from"] for r in again] == [None, 17, None]
    assert all(a.records == b.records and a.status == b.status == "completed"
               for a, b in zip(again, ref, strict=True))
