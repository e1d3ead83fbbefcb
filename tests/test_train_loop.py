"""The training loop's option records and stages: LoopControls as keywords or ``loop=``,
CurvatureMeasureOptions, the divergence test on queued losses, the names flatbook.train keeps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from flatbook import data, models, train, train_checkpoint, train_loop, train_measure
from flatbook._io import dumps

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits", classes=[0, 1, 2], n_train=40, n_test=20, flatten=True,
                     dtype="float64")  # fmt: skip


def small_net(seed: int = 0) -> nn.Sequential:
    return models.build("mlp", (64,), 3, seed=seed, dtype=torch.float64, hidden=[6])


def test_loop_controls_as_a_record_or_as_keywords_train_identically(
        digits: data.Dataset, tmp_path: Path) -> None:  # fmt: skip
    calls: list[int] = []
    kw = dict(lr=0.1, batch_size=8, steps=10, measure_every=5, progress=False)
    a = train.train(small_net(), digits.X_train, digits.Y_train, measure=None,
                    measure_at=[3], chunk=7, **kw)  # fmt: skip
    loop = train.LoopControls(measure=None, measure_at=[3], chunk=7,
                              callback=lambda t, m, r: calls.append(t))  # fmt: skip
    b = train.train(small_net(), digits.X_train, digits.Y_train, loop=loop, **kw)
    assert dumps(a.records) == dumps(b.records)
    assert [r["step"] for r in b.records] == [0, 3, 10] and calls == list(range(1, 11))
    # a keyword overrides the record's field
    c = train.train(small_net(), digits.X_train, digits.Y_train, loop=loop, measure_at=[6], **kw)
    assert [r["step"] for r in c.records] == [0, 6, 10]
    # the record's default measure is the default one: curvature keys in the records
    d = train.train(small_net(), digits.X_train, digits.Y_train,
                    loop=train.LoopControls(measure=train_measure.make_measure(["trace"])),
                    **kw)  # fmt: skip
    assert "trace_gn" in d.final and train.LoopControls().measure is train.default_measure


def test_unknown_or_bad_loop_controls_are_named(digits: data.Dataset) -> None:
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['checkpoint'\].*"
                                        r"checkpoint_path.*handle_signals"):
        train.train(small_net(), digits.X_train, digits.Y_train, checkpoint="c.pt")
    with pytest.raises(TypeError, match="loop must be a LoopControls; got dict"):
        train.train(small_net(), digits.X_train, digits.Y_train, loop={"desc": "x"})
    with pytest.raises(TypeError, match=r"unknown loop control\(s\) \['lr'\]; allowed: .*chunk"):
        train.LoopControls.from_flags(lr=0.1)
    with pytest.raises(ValueError, match="chunk"):
        train.LoopControls(chunk=0)
    with pytest.raises(ValueError, match="measure_at"):
        train.train(small_net(), digits.X_train, digits.Y_train, measure_at="5")
    with pytest.raises(ValueError, match=r"measure_at entries must be integers in 0\.\.4"):
        train.train(small_net(), digits.X_train, digits.Y_train, steps=4, measure_at=[5])


def test_curvature_measure_options_record_and_keywords_agree(digits: data.Dataset) -> None:
    net, X, Y = small_net(), digits.X_train[:12], digits.Y_train[:12]
    a = train.curvature_measure(net, X, Y, "squared", 0, trace=False, tol=1e-6)
    opts = train.CurvatureMeasureOptions(trace=False, tol=1e-6)
    assert a == train.curvature_measure(net, X, Y, "squared", 0, options=opts)
    assert set(a) == {"lambda_max", "lambda_max_residual", "lambda_max_n_hvp",
                      "lambda_max_converged"}  # fmt: skip
    # λ_max of the Hessian of L = (1/2n) Σ ‖f(x_i) − y_i‖² against a dense eigenvalue
    params = list(net.parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def loss_of(v: torch.Tensor) -> torch.Tensor:
        chunks, i = {}, 0
        for (name, p) in net.named_parameters():
            chunks[name] = v[i: i + p.numel()].view_as(p)
            i += p.numel()
        out = torch.func.functional_call(net, chunks, (X,))
        return 0.5 * (out - Y).pow(2).sum(1).mean()

    H = torch.autograd.functional.hessian(loss_of, flat)
    assert a["lambda_max"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-5)
    only_trace = train.curvature_measure(net, X, Y, "squared", 0, options=opts, sharpness=False,
                                         trace=True)  # fmt: skip
    assert set(only_trace) == {"trace_gn"}
    with pytest.raises(TypeError, match=r"unknown keyword\(s\) \['tolerance'\].*max_hvp"):
        train.curvature_measure(net, X, Y, "squared", 0, tolerance=1e-3)


def test_flush_names_the_first_diverged_step_and_nonfinite_parameters(
        digits: data.Dataset) -> None:  # fmt: skip
    o = train.check_train_args(steps=20, measure_every=20, progress=False,
                               divergence_threshold=100.0)  # fmt: skip
    c = train.LoopControls(measure=None)
    net = small_net()
    loop = train.TrainLoop(train.prepare(net, (digits.X_train, digits.Y_train, None, None), o, c),
                           net)  # fmt: skip
    loop.step, loop.first_pending = 13, 10
    loop.pending = [torch.tensor(1.0), torch.tensor(150.0), torch.tensor(float("nan"))]
    assert loop.flush() and loop.diverged_at == 11 and loop.pending == []
    loop.pending = [torch.tensor(1.0), torch.tensor(2.0)]
    assert not loop.flush() and loop.first_pending == 13
    with torch.no_grad():
        next(net.parameters())[0, 0] = float("inf")
    assert loop.flush() and loop.diverged_at == 13
    loop.bar.close()


def test_batches_of_an_epoch_partition_its_permutation(digits: data.Dataset) -> None:
    o = train.check_train_args(steps=12, measure_every=12, batch_size=16, seed=4, progress=False)
    net = small_net()
    loop = train.TrainLoop(train.prepare(net, (digits.X_train, digits.Y_train, None, None), o,
                                         train.LoopControls(measure=None)), net)  # fmt: skip
    assert loop.setup.steps_per_epoch == 2  # ⌊40/16⌋: the last 8 samples of an epoch dropped
    for epoch in range(3):
        perm = train_loop.epoch_perm(4, epoch, 40)
        for pos in range(2):
            loop.step = 2 * epoch + pos
            xb, _ = loop.batch()
            assert torch.equal(xb, digits.X_train[perm[16 * pos: 16 * (pos + 1)]])
    loop.bar.close()


def test_every_name_stays_importable_from_flatbook_train() -> None:
    for name in train.__all__:
        assert hasattr(train, name), name
    assert train._epoch_perm is train_loop.epoch_perm
    assert train._label_noise is train_loop.label_noise_sample
    assert train._DeferredStop is train_checkpoint.DeferredStop
    assert train._meta_differences is train_checkpoint.meta_differences
    assert train._progress is train_loop.progress_bar
    assert train.CheckpointMismatchError is train_checkpoint.CheckpointMismatchError
    assert train.make_measure is train_measure.make_measure


def test_train_modules_meet_the_house_rules() -> None:
    spec = importlib.util.spec_from_file_location("house_rules",
                                                  ROOT / "scripts" / "house_rules.py")  # fmt: skip
    assert spec is not None and spec.loader is not None
    rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rules)
    files = ["train.py", "train_loop.py", "train_measure.py", "train_checkpoint.py"]
    out = [o for f in files for o in rules.offences(ROOT / "flatbook" / f, 50, 8, 550)]
    assert out == []
