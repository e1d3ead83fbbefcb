"""Naming representations and splitting nn.Sequential models (flatbook.layers)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flatbook import layers, models

DT = torch.float64


def _nets() -> list[tuple[nn.Sequential, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    mlp = models.mlp([6, 5, 4, 3], activation="tanh", seed=0, dtype=DT)
    cnn = models.lenet5((1, 8, 8), 3, seed=0, dtype=DT).eval()
    vit = models.vit((1, 8, 8), 3, patch=4, dim=8, depth=1, heads=2, seed=0, dtype=DT).eval()
    X = torch.randn(4, 6, generator=g, dtype=DT)
    Xi = torch.randn(4, 1, 8, 8, generator=g, dtype=DT)
    return [(mlp, X), (cnn, Xi), (vit, Xi)]


def test_representation_names_and_boundaries() -> None:
    net = models.mlp([4, 3, 2], seed=0)
    assert layers.representations(net) == ["input", "0", "1", "output"]
    assert [layers.boundary(net, s) for s in layers.representations(net)] == [0, 1, 2, 3]
    assert layers.boundary(net, "2") == 3  # str(L-1) is an alias of "output"


@pytest.mark.parametrize("k", range(3))
def test_split_composes_to_model_at_every_boundary(k: int) -> None:
    net, X = _nets()[k]
    with torch.no_grad():
        f = net(X)
        for name in [*layers.representations(net), str(len(net) - 1)]:
            head, tail = layers.split(net, name)
            h = head(X)
            assert torch.equal(tail(h), f), name
            assert torch.equal(layers.representation(net, X, name), h)
    head, tail = layers.split(net, "input")
    assert torch.equal(head(X), X)


def test_dense_layers_fields_mlp() -> None:
    net = models.mlp([6, 5, 4, 3], seed=1, dtype=DT)
    dl = layers.dense_layers(net)
    assert [d.name for d in dl] == ["l1", "l2", "l3"]
    assert [d.index for d in dl] == [0, 2, 4]
    assert [d.l for d in dl] == [1, 2, 3]
    assert [d.input_name for d in dl] == ["input", "1", "3"]
    params = dict(net.named_parameters())
    X = torch.randn(5, 6, dtype=DT)
    for d in dl:
        assert params[d.weight_name] is d.module.weight is d.weight
        assert isinstance(d.module, nn.Linear)
        with torch.no_grad():
            h = d.head(X)
            assert h.shape == (5, d.in_features)
            assert torch.equal(d.tail(h), net(X))
            assert torch.equal(h, layers.representation(net, X, d.input_name))


def test_dense_layers_cnn_and_vit_are_the_top_level_linears() -> None:
    (_, _), (cnn, Xi), (vit, _) = _nets()
    assert [d.index for d in layers.dense_layers(cnn, Xi)] == [
        i for i, m in enumerate(cnn) if isinstance(m, nn.Linear)
    ]
    assert [d.weight_name for d in layers.dense_layers(vit, Xi)] == [f"{len(vit) - 1}.weight"]


def test_tokenwise_linear_is_not_a_dense_layer_given_inputs() -> None:
    # a Linear applied to tokens [n, T, p] shares its weight across positions (L2 fails)
    net = nn.Sequential(
        nn.Unflatten(1, (3, 4)), nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, 2)
    ).to(DT)
    X = torch.randn(6, 12, dtype=DT)
    assert [d.index for d in layers.dense_layers(net)] == [1, 4]
    assert [(d.name, d.index) for d in layers.dense_layers(net, X)] == [("l1", 4)]


def test_unsupported_models_raise_clear_errors() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    with pytest.raises(TypeError, match=r"nn\.Sequential"):
        layers.representations(Net())
    with pytest.raises(TypeError, match="Sequential"):
        layers.dense_layers(nn.Linear(3, 2))  # type: ignore[arg-type]

    class Residual(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return x + super().forward(x)

    with pytest.raises(TypeError, match="overrides forward"):
        layers.split(Residual(nn.Linear(3, 3)), "0")
    with pytest.raises(ValueError, match="representation name"):
        layers.split(models.mlp([3, 2]), "7")
    with pytest.raises(ValueError, match="representation name"):
        layers.boundary(models.mlp([3, 2]), "relu")
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="tied"):
        layers.dense_layers(nn.Sequential(lin, nn.Tanh(), lin))
