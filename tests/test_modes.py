"""One eval_mode: the training engine and the measurements switch modes the same way."""

from __future__ import annotations

from torch import nn

from flatbook import curvature, train


def test_one_eval_mode_restores_every_submodule_flag() -> None:
    assert train.eval_mode is curvature.eval_mode
    model = nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))
    model.train()
    model[2].eval()  # mixed flags must come back as they were, not all set to the top's
    with train.eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, True, False]
