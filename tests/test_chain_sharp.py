"""flatbook.chain.mls_sharp: the sharper MLS form of the capstone, constant 1 + √k."""

from __future__ import annotations

import math

import pytest
import torch

from flatbook import bounds, chain, tight


@pytest.mark.parametrize("k", [1, 3, 7])
def test_sharp_form_is_tight_in_its_equality_case(k: int) -> None:
    tc = tight.sharp_mls_case(k=k, d=k + 2, lr=0.5)
    assert tc.batch_size == 1 and set(tc.tight) == {"corollary_mls_sharp", "corollary_mls_qm"}
    assert bounds.mean_square_lr(tc.model, tc.X, 1) == pytest.approx(tc.lr, rel=1e-12)  # (H2′)
    qm, gm = chain.mls_sharp(bounds.quantities(tc.model, tc.X), tc.lr, batch_size=1)
    # slack exactly 1: a constant 2√k (or any other) instead of 1 + √k fails here for k > 1
    assert qm.slack == pytest.approx(1.0, abs=1e-9), qm
    assert gm.slack == pytest.approx(1.0, abs=1e-9), gm
    assert chain.sharp_constant(k) == 1 + math.sqrt(k) <= 2 * math.sqrt(k)


def test_sharp_form_fails_where_the_condition_fails() -> None:
    tc = tight.sharp_mls_case(k=3, scale=1.01)     # spectrum 1 % above the equality case
    assert bounds.mean_square_lr(tc.model, tc.X, 1) < tc.lr   # (H2′) fails ...
    qm, gm = chain.mls_sharp(bounds.quantities(tc.model, tc.X), tc.lr, batch_size=1)
    assert not qm.holds() and not gm.holds()              # ... and so does the bound


def test_sharp_form_on_a_trained_network_and_in_the_corollary() -> None:
    from flatbook import data, models, train

    torch.set_num_threads(1)
    ds = data.load("digits", n_train=64, seed=0, flatten=True, dtype="float64")
    net = models.mlp([64, 16, 10], activation="tanh", seed=0, dtype=torch.float32)
    train.train(net, ds.X_train.float(), ds.Y_train.float(), batch_size=4, lr=0.2, steps=800,
                measure=None, measure_every=800, seed=0, progress=False)
    net, X, Y = net.double(), ds.X_train, ds.Y_train
    c = chain.corollary(net, X, Y, lr=0.2, batch_size=4, n_hvp=20)
    assert c.hypotheses["stable"].ok
    for b in (c.mls_sharp, c.mls_qm):
        assert b.holds(1e-9), b
    # the step behind it, on the top eigenvalues of the per-sample H_i
    assert math.sqrt(c.top_sq) <= chain.sharp_constant(c.k) / (c.p * c.lr)
    assert c.mls.rhs / c.mls_sharp.rhs == pytest.approx(2 * c.k / (1 + math.sqrt(c.k)),
                                                        rel=1e-12)


def test_sharp_form_rejects_bad_input() -> None:
    tc = tight.sharp_mls_case()
    q = bounds.quantities(tc.model, tc.X)
    with pytest.raises(ValueError, match="B < n"):
        chain.mls_sharp(q, 0.5, batch_size=tc.X.shape[0])
    with pytest.raises(ValueError, match="lr"):
        chain.mls_sharp(q, -1.0, batch_size=1)
    with pytest.raises(ValueError, match="k"):
        chain.sharp_constant(0)
    with pytest.raises(ValueError, match="k must be ≤ d"):
        tight.sharp_mls_case(k=4, d=3)
    with pytest.raises(ValueError, match="scale"):
        tight.sharp_mls_case(scale=0.0)
