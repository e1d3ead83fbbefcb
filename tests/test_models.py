"""Model zoo: shapes, classic parameter counts, seeding, splittability, torch.func support."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

from flatbook import models

SMALL = {
    "mlp": {"hidden": [5, 4]},
    "lenet5": {},
    "vgg11": {"width": 1 / 32},
    "vgg10": {"width": 1 / 32},
    "vit": {"patch": 4, "dim": 8, "depth": 1, "heads": 2},
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    old = torch.get_num_threads()  # tiny models: threads only add contention
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16)])
def test_build_shapes_and_sequential_split(name: str, shape: tuple[int, ...]) -> None:
    net = models.build(name, shape, 3, seed=1, dtype=torch.float64, **SMALL[name])
    assert isinstance(net, nn.Sequential)
    x = torch.randn(4, *shape, dtype=torch.float64)
    y = net(x)
    assert y.shape == (4, 3) and y.dtype == torch.float64
    # any boundary i splits the network: tail(head(x)) == f(x) (DESIGN.md)
    for i in range(len(net) + 1):
        assert torch.equal(net[i:](net[:i](x)), y)
    # no BatchNorm / dropout by default: the loss is a deterministic function of θ
    kinds = {type(m) for m in net.modules()}
    assert not kinds & {nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout}
    net.train()
    assert torch.equal(net(x), y)


def test_classic_parameter_counts() -> None:
    # LeNet-5 on 28×28 MNIST: 61 706 parameters (conv 156 + 2 416, dense 48 120 + 10 164 + 850)
    assert n_params(models.build("lenet5", (1, 28, 28), 10)) == 61_706
    # VGG-11 ("A") convolutions on RGB: 9 220 480 parameters; + classifier 512-512-10
    net = models.build("vgg11", (3, 32, 32), 10)
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    dense = [m for m in net if isinstance(m, nn.Linear)]
    assert (len(convs), len(dense)) == (8, 3)
    assert sum(n_params(m) for m in convs) == 9_220_480
    assert sum(n_params(m) for m in dense) == 2 * (512 * 512 + 512) + 512 * 10 + 10
    small = models.build("vgg10", (3, 32, 32), 2)
    counts = (
        sum(isinstance(m, nn.Conv2d) for m in small),
        sum(isinstance(m, nn.Linear) for m in small),
    )
    assert counts == (8, 2)
    # MLP: d·h1 + h1 + h1·h2 + h2 + h2·k + k
    assert (
        n_params(models.build("mlp", (64,), 10, hidden=[32, 16]))
        == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    )


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_seed_reproducible_and_global_rng_untouched(name: str) -> None:
    state = torch.random.get_rng_state()
    a = models.build(name, (1, 8, 8), 2, seed=5, **SMALL[name])
    b = models.build(name, (1, 8, 8), 2, seed=5, **SMALL[name])
    c = models.build(name, (1, 8, 8), 2, seed=6, **SMALL[name])
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_vit_supports_torch_func_transforms() -> None:
    """Per-sample input Jacobians (vmap∘jacrev) and forward-over-reverse HVPs go through the
    hand-written attention; both agree with plain autograd."""
    net = models.build("vit", (1, 8, 8), 3, seed=0, dtype=torch.float64, **SMALL["vit"])
    X = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    J = vmap(jacrev(lambda x: net(x.unsqueeze(0)).squeeze(0)))(X)  # [n, k, 1, 8, 8]
    J0 = torch.autograd.functional.jacobian(lambda x: net(x.unsqueeze(0)).squeeze(0), X[0])
    assert torch.allclose(J[0], J0, atol=1e-12)
    params = {n: p.detach() for n, p in net.named_parameters()}

    def L(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(net, p, (X,)).pow(2).sum()

    v = {n: torch.randn_like(p) for n, p in params.items()}
    _, hv = jvp(grad(L), (params,), (v,))
    # finite-difference check of the HVP: (∇L(θ+εv) − ∇L(θ−εv)) / 2ε
    eps = 1e-5
    gp = grad(L)({n: params[n] + eps * v[n] for n in params})
    gm = grad(L)({n: params[n] - eps * v[n] for n in params})
    scale = max(h.abs().max() for h in hv.values())
    for n in params:  # central difference error is O(ε²) ≈ 1e-10 relative
        assert (hv[n] - (gp[n] - gm[n]) / (2 * eps)).abs().max() < 1e-6 * scale


def test_vit_mean_pool_and_optional_batch_norm() -> None:
    net = models.build("vit", (1, 8, 8), 2, pool="mean", **SMALL["vit"])
    assert net[0].cls is None and net(torch.randn(2, 1, 8, 8)).shape == (2, 2)
    vgg = models.build("vgg10", (1, 8, 8), 2, width=1 / 32, batch_norm=True)
    assert any(isinstance(m, nn.BatchNorm2d) for m in vgg)


def test_mlp_on_images_flattens_first() -> None:
    net = models.build("mlp", (1, 8, 8), 10, hidden=[7])
    assert isinstance(net[0], nn.Flatten) and isinstance(net[1], nn.Linear)
    assert net[1].in_features == 64


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: models.build("resnet", (3, 8, 8), 2), r"unknown model 'resnet'; allowed: .*mlp"),
        (lambda: models.build("mlp", (64,), 2, widths=[3]), r"unknown option.*'widths'.*hidden"),
        (lambda: models.build("mlp", (64,), 0), r"n_classes"),
        (lambda: models.build("lenet5", (64,), 2), r"input_shape for lenet5"),
        (lambda: models.build("vit", (1, 8, 8), 2, patch=3), r"patch \(3\) must divide"),
        (lambda: models.build("vit", (1, 8, 8), 2, dim=10, heads=4), r"heads \(4\) must divide"),
        (lambda: models.build("vit", (1, 8, 8), 2, pool="max"), r"unknown pool 'max'"),
        (lambda: models.build("vgg11", (1, 8, 8), 2, width=0), r"width"),
        (lambda: models.build("mlp", (64,), 2, activation="swish"), r"unknown activation"),
        (lambda: models.mlp([3]), r"widths"),
    ],
)
def test_bad_arguments_give_clear_errors(call, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        call()


def test_aliases() -> None:
    assert models.canonical_name("VGG_small") == "vgg10"
    assert models.canonical_name("lenet") == "lenet5"


def test_rescale_layers_keeps_the_function_and_moves_the_weights() -> None:
    dt = torch.float64
    X = torch.randn(11, 4, generator=torch.Generator().manual_seed(0), dtype=dt)
    for act in ("relu", "linear"):
        net = models.mlp([4, 6, 5, 2], activation=act, seed=1, dtype=dt)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        for idx, a in ((0, 0.1), (2, 7.0)):
            na = models.rescale_layers(net, idx, a)
            assert na is not net and torch.allclose(na(X), net(X), rtol=1e-12, atol=1e-14)
            nxt = idx + 2
            assert torch.allclose(na[idx].weight, a * net[idx].weight, rtol=1e-15)
            assert torch.allclose(na[idx].bias, a * net[idx].bias, rtol=1e-15)
            assert torch.allclose(na[nxt].weight, net[nxt].weight / a, rtol=1e-15)
            assert torch.equal(na[nxt].bias, net[nxt].bias)
            assert not torch.allclose(na[idx].weight, net[idx].weight)
        for k, v in net.state_dict().items():  # the original is untouched
            assert torch.equal(v, before[k])
    # LeakyReLU between the layers and a bias-free first layer: still the same function
    leaky = nn.Sequential(nn.Linear(4, 3, bias=False), nn.LeakyReLU(0.2), nn.Linear(3, 2)).to(dt)
    assert torch.allclose(models.rescale_layers(leaky, 0, 3.0)(X), leaky(X), rtol=1e-12)


def test_rescale_layers_refuses_what_would_change_the_function() -> None:
    tanh = models.mlp([3, 4, 2], activation="tanh", seed=0)
    with pytest.raises(ValueError, match=r"item 1 \(Tanh\).*not positively homogeneous.*ReLU"):
        models.rescale_layers(tanh, 0, 2.0)
    X = torch.randn(5, 3)
    forced = models.rescale_layers(tanh, 0, 2.0, strict=False)  # allowed, and not the same f
    assert not torch.allclose(forced(X), tanh(X), rtol=1e-3)
    relu = models.mlp([3, 4, 2], seed=0)
    for a in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="a must be a finite number > 0"):
            models.rescale_layers(relu, 0, a)
    with pytest.raises(ValueError, match="nn.Linear item"):
        models.rescale_layers(relu, 1, 2.0)
    with pytest.raises(ValueError, match="no nn.Linear follows"):
        models.rescale_layers(relu, 2, 2.0)
    with pytest.raises(ValueError, match="layer_index must be an item index"):
        models.rescale_layers(relu, 5, 2.0)
    with pytest.raises(TypeError, match="nn.Sequential"):
        models.rescale_layers(nn.Linear(2, 2), 0, 2.0)  # type: ignore[arg-type]
