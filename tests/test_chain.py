"""flatbook.chain: the links of the book's map and the end-to-end corollary (capstone)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from flatbook import bounds, chain, data, models, plots, tight, traceability, train  # noqa: E402


@pytest.fixture(scope="module")
def trained() -> tuple[torch.nn.Sequential, torch.Tensor, torch.Tensor]:
    """A small tanh MLP trained with SGD (B = 4) on 64 digits, in float64."""
    torch.set_num_threads(1)
    ds = data.load("digits", n_train=64, seed=0, flatten=True, dtype="float64")
    net = models.mlp([64, 16, 10], activation="tanh", seed=0, dtype=torch.float32)
    train.train(net, ds.X_train.float(), ds.Y_train.float(), batch_size=4, lr=0.2, steps=800,
                measure=None, measure_every=800, seed=0, progress=False)
    return net.double(), ds.X_train, ds.Y_train


def test_links_name_real_statements_and_bounds() -> None:
    for link in chain.LINKS:
        assert link.label in traceability.LABELS, link.label
    keys = {b for b in (lk.bound for lk in chain.LINKS) if b is not None}
    # every named bound is computable by all_bounds or link_slacks
    q = bounds.quantities(models.mlp([3, 4, 2], seed=0, dtype=torch.float64),
                          torch.randn(5, 3, dtype=torch.float64))
    known = set(bounds.all_bounds(q, lr=0.1, batch_size=2)) | {"l1_gap"}
    assert keys <= known, keys - known


def test_corollary_hypotheses_and_traces_on_a_trained_network(trained) -> None:
    net, X, Y = trained
    c = chain.corollary(net, X, Y, lr=0.2, batch_size=4)
    assert c.hypotheses["stable"].ok and c.hypotheses["batch"].ok
    assert c.hypotheses["k_le_d"].ok and c.p == pytest.approx((64 - 4) / (4 * 63), rel=1e-15)
    # (the forms themselves are tested at slack 1 on their equality cases: test_tight.py,
    # test_chain_sharp.py)
    # independent traces agree: ghost norms vs the vmap(jacrev) Gram matrix
    assert c.trace_jacrev == pytest.approx(c.trace, rel=1e-9)


def test_corollary_fails_exactly_where_its_stability_hypothesis_fails() -> None:
    # on the equality case the volume form is tight at eta = eta*: 1 % more step breaks both
    tc = tight.isotropic_linear(k=3, d=5, n=6)
    for factor, ok in ((0.99, True), (1.01, False)):
        c = chain.corollary(tc.model, tc.X, tc.Y, factor * tc.lr, tc.batch_size, n_hvp=12)
        assert c.lvr.holds() is ok and c.hypotheses["stable"].ok is ok
        assert c.lvr.slack == pytest.approx(1 / factor, rel=1e-9)


def test_interpolation_check_holds_where_hutchpp_is_exact() -> None:
    # a linear net at interpolation: H = H_GN exactly and Hutch++'s standard error is 0, so
    # only rounding separates the two traces; the check must not fail on it
    tc = tight.sharp_mls_case(k=1, d=3)
    c = chain.corollary(tc.model, tc.X, tc.Y, tc.lr, tc.batch_size, n_hvp=12)
    assert c.trace_hessian_se == pytest.approx(0.0, abs=1e-12) and c.interpolation.ok
    # the floor is at rounding level: it could not hide a gap of a standard error
    assert c.interpolation.limit <= 1e-8 * c.trace


def test_corollary_rejects_bad_input(trained) -> None:
    net, X, Y = trained
    with pytest.raises(ValueError, match="B < n"):
        chain.corollary(net, X, Y, lr=0.1, batch_size=X.shape[0])
    with pytest.raises(ValueError, match="lr"):
        chain.corollary(net, X, Y, lr=-1.0, batch_size=4)
    with pytest.raises(TypeError, match="batch_size"):
        chain.corollary(net, X, Y, lr=0.1, batch_size="full")


def test_link_slacks(trained) -> None:
    net, X, Y = trained
    s = chain.link_slacks(net, X, Y, lr=0.2, batch_size=4)
    assert s["t7_sgd"] >= 1, s        # empirical: the trained network is below its ceiling
    assert {"t7_sgd", "t1_weighted", "t2_gm", "t3_gm", "t4_nmls", "t5_mls_l1"} <= set(s)


def test_style_and_figures_are_legible() -> None:
    assert plt.rcParams["figure.dpi"] >= 150 and plt.rcParams["legend.fontsize"] >= 9
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4))
    plots.roadmap(ax0, chain.LINKS, slacks={"t7_sgd": 3.0})
    plots.waterfall(ax1, 100.0, {"a": 2.0, "b": 5.0})
    assert plots.small_text(fig) == []
    ax1.legend(fontsize=6)
    ax1.set_xlabel("tiny", fontsize=6)
    assert plots.small_text(fig), "small_text must flag 6 pt text"
    plt.close(fig)
