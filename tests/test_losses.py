import pytest
import torch

from flatbook import losses


def test_squared_matches_closed_form() -> None:
    out = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]], dtype=torch.float64)
    tgt = torch.zeros_like(out)
    # (1/2n) Σ ‖f − y‖² with n = 3: (1+4 + 0+1 + 9+0.25) / 6
    assert losses.squared(out, tgt).item() == pytest.approx(15.25 / 6, rel=1e-15)
    # torch's MSELoss divides by n·k instead: a factor k/2 apart
    mse = torch.nn.MSELoss()(out, tgt).item()
    assert losses.squared(out, tgt).item() == pytest.approx(mse * out.shape[1] / 2)


def test_cross_entropy_indices_and_onehot_agree() -> None:
    g = torch.Generator().manual_seed(1)
    out = torch.randn(5, 4, generator=g, dtype=torch.float64)
    idx = torch.tensor([0, 3, 1, 1, 2])
    onehot = torch.nn.functional.one_hot(idx, 4).double()
    a = losses.cross_entropy(out, idx)
    b = losses.cross_entropy(out, onehot)
    assert torch.allclose(a, b, rtol=1e-13)


@pytest.mark.parametrize(
    "out,tgt,match",
    [
        (torch.zeros(3), torch.zeros(3), "shape"),
        (torch.zeros(0, 2), torch.zeros(0, 2), "empty"),
        (torch.zeros(3, 2), torch.zeros(4, 2), "samples"),
        (torch.zeros(3, 2), torch.zeros(3, 3), "shape"),
    ],
)
def test_squared_rejects_bad_shapes(out: torch.Tensor, tgt: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        losses.squared(out, tgt)


def test_unknown_loss_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="allowed"):
        losses.get("hinge")
