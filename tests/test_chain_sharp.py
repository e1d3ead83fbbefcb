"""flatbook.chain.mls_sharp: the sharper MLS form of the capstone, constant 1 + √k."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flatbook import bounds, chain


def _tight_network(k: int = 3, d: int = 5, n: int = 4, lr: float = 0.5, scale: float = 1.0,
                   seed: int = 0) -> tuple[nn.Sequential, torch.Tensor]:
    """f(x) = A W_1 x with W_1 = I (trainable) and A fixed, unit-norm inputs.

    A has squared singular values (1 + √k)/η and 1/η (k − 1 times), times ``scale``: then every
    H_i = J_iᵀJ_i has that spectrum and, for B = 1 (p = 1), the mean-square condition holds with
    equality at η — the equality case of the sharper form.
    """
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    s2 = torch.tensor([1 + math.sqrt(k)] + [1.0] * (k - 1), dtype=torch.float64) / lr
    A = U @ torch.diag((scale * s2).sqrt()) @ V.T
    net = nn.Sequential(nn.Linear(d, d, bias=False), nn.Linear(d, k, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(d, dtype=torch.float64))
        net[1].weight.copy_(A)
    net[1].weight.requires_grad_(False)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    return net, X / X.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_sharp_form_is_tight_in_its_equality_case(k: int) -> None:
    lr = 0.5
    net, X = _tight_network(k=k, d=k + 2, lr=lr)
    assert bounds.mean_square_lr(net, X, 1) == pytest.approx(lr, rel=1e-12)  # (H2′) with =
    qm, gm = chain.mls_sharp(bounds.quantities(net, X), lr, batch_size=1)
    # slack exactly 1: a constant 2√k (or any other) instead of 1 + √k fails here for k > 1
    assert qm.slack == pytest.approx(1.0, abs=1e-9), qm
    assert gm.slack == pytest.approx(1.0, abs=1e-9), gm
    assert chain.sharp_constant(k) == 1 + math.sqrt(k) <= 2 * math.sqrt(k)


def test_sharp_form_fails_where_the_condition_fails() -> None:
    lr = 0.5
    net, X = _tight_network(k=3, lr=lr, scale=1.01)      # spectrum 1 % above the equality case
    assert bounds.mean_square_lr(net, X, 1) < lr          # (H2′) fails ...
    qm, gm = chain.mls_sharp(bounds.quantities(net, X), lr, batch_size=1)
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
    net, X = _tight_network()
    q = bounds.quantities(net, X)
    with pytest.raises(ValueError, match="B < n"):
        chain.mls_sharp(q, 0.5, batch_size=X.shape[0])
    with pytest.raises(ValueError, match="lr"):
        chain.mls_sharp(q, -1.0, batch_size=1)
    with pytest.raises(ValueError, match="k"):
        chain.sharp_constant(0)
