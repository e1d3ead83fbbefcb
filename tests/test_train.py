"""Training loop: the update rule, batch order, schedules, measurements, divergence, exact
resume after an interruption (callback or SIGTERM), argument validation."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from flatbook import curvature, data, models, runspec, train
from flatbook._io import dumps


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # tiny models: intra-op threads only add contention on a shared machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits", classes=[0, 1, 2], n_train=60, n_test=30, flatten=True,
                     dtype="float64")  # fmt: skip


def small_net(seed: int = 0, hidden: int = 8) -> nn.Sequential:
    return models.build("mlp", (64,), 3, seed=seed, dtype=torch.float64, hidden=[hidden])


def same(a: object, b: object) -> bool:
    """Equality that treats NaN as equal to NaN (records may hold NaN for n/a quantities)."""
    return dumps(a) == dumps(b)


def params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


# ------------------------------------------------------------------------- the update rule


def test_full_batch_gd_matches_closed_form_gradient_steps() -> None:
    """Linear model f = Wx + b, L = (1/2n)‖XWᵀ + b − Y‖²: ∇_W L = (1/n) Rᵀ X, ∇_b L = mean R."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 5, generator=g, dtype=torch.float64)
    Y = torch.randn(20, 3, generator=g, dtype=torch.float64)
    net = models.mlp([5, 3], seed=1, dtype=torch.float64)
    W, b = net[0].weight.detach().clone(), net[0].bias.detach().clone()
    eta = 0.3
    out = train.train(net, X, Y, lr=eta, batch_size="full", steps=7, measure_every=7,
                      measure=None, progress=False, target_loss=None)  # fmt: skip
    for _ in range(7):
        R = X @ W.T + b - Y
        W, b = W - eta * R.T @ X / 20, b - eta * R.mean(0)
    assert out.status == "completed" and out.steps_done == 7
    assert torch.allclose(net[0].weight, W, atol=1e-13) and torch.allclose(net[0].bias, b)
    # records: initial and final, with the exact squared loss
    R = X @ W.T + b - Y
    assert [r["step"] for r in out.records] == [0, 7]
    assert out.final["train_loss"] == pytest.approx(0.5 * R.pow(2).sum().item() / 20, rel=1e-12)


def test_sgd_batches_are_epoch_permutations_without_replacement(digits: data.Dataset) -> None:
    """Replaying the documented batch order (randperm per (seed, epoch), last partial batch
    dropped) by hand reproduces the trained parameters exactly."""
    X, Y = digits.X_train, digits.Y_train
    net = models.mlp([64, 3], seed=2, dtype=torch.float64)
    ref = models.mlp([64, 3], seed=2, dtype=torch.float64)
    B, steps, eta = 16, 11, 0.05  # 60 // 16 = 3 steps per epoch, 12 samples dropped
    out = train.train(net, X, Y, lr=eta, batch_size=B, steps=steps, measure_every=steps,
                      measure=None, seed=5, progress=False)  # fmt: skip
    assert out.steps_per_epoch == 3
    opt = torch.optim.SGD(ref.parameters(), lr=eta)
    for t in range(steps):
        e, pos = divmod(t, 3)
        perm = train._epoch_perm(5, e, 60)
        assert sorted(perm.tolist()) == list(range(60))
        idx = perm[pos * B : (pos + 1) * B]
        opt.zero_grad()
        (0.5 * (ref(X[idx]) - Y[idx]).pow(2).sum() / B).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params(net), params(ref), strict=True))


def test_same_seed_same_numbers_and_measurement_does_not_perturb_training(
    digits: data.Dataset,
) -> None:
    kw = dict(lr=0.1, batch_size=8, steps=30, measure_every=10, seed=3, progress=False,
              eval_size=16)  # fmt: skip
    a, b, c = small_net(), small_net(), small_net()
    ra = train.train(a, digits.X_train, digits.Y_train, digits.X_test, digits.Y_test, **kw)
    rb = train.train(b, digits.X_train, digits.Y_train, digits.X_test, digits.Y_test, **kw)
    rc = train.train(c, digits.X_train, digits.Y_train, measure=None, **kw)
    assert same(ra.records, rb.records)
    assert all(torch.equal(x, y) for x, y in zip(params(a), params(c), strict=True))
    other = small_net()
    train.train(other, digits.X_train, digits.Y_train, measure=None, **{**kw, "seed": 4})
    assert not all(torch.equal(x, y) for x, y in zip(params(a), params(other), strict=True))
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "epoch"} <= set(ra.final)
    assert "test_loss" not in rc.final and "lambda_max" not in rc.final


def test_records_hold_curvature_and_report_on_the_eval_subset(digits: data.Dataset) -> None:
    net = small_net()
    out = train.train(net, digits.X_train, digits.Y_train, lr=0.1, batch_size=8, steps=20,
                      measure_every=20, eval_size=24, progress=False)  # fmt: skip
    rec = out.final
    idx = torch.as_tensor(out.eval_indices)
    assert len(idx) == 24 and idx.unique().numel() == 24
    Xe, Ye = digits.X_train[idx], digits.Y_train[idx]
    lam = curvature.sharpness(net, "squared", Xe, Ye, tol=1e-10).values[0].item()
    assert rec["lambda_max"] == pytest.approx(lam, rel=1e-3)
    assert rec["trace_gn"] == pytest.approx(curvature.gn_trace(net, Xe).item(), rel=1e-10)
    assert train.report_available()  # flatbook.report is wired in: its keys are recorded
    for key in ("t3_weighted_slack", "mls_mean", "log_lvr_mean", "nmls"):
        assert key in rec and isinstance(rec[key], float)
    only = train.make_measure(("trace",))(net, Xe, Ye, "squared", 0)
    assert set(only) == {"trace_gn"}


def test_custom_measure_and_target_step(digits: data.Dataset) -> None:
    seen: list[int] = []

    def measure(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str, seed: int):
        assert not model.training and X.shape[0] == 10 and loss == "squared"
        seen.append(1)
        return {"wnorm": sum(p.pow(2).sum() for p in model.parameters()).item()}

    out = train.train(small_net(hidden=32), digits.X_train, digits.Y_train, lr=0.3,
                      batch_size="full", steps=300, measure_at=[50, 100, 200], measure=measure,
                      eval_size=10, target_loss=0.05, progress=False)  # fmt: skip
    assert [r["step"] for r in out.records] == [0, 50, 100, 200, 300] and len(seen) == 5
    first = next(r["step"] for r in out.records if r["train_loss"] < 0.05)
    assert out.target_step == first
    assert all(r["wnorm"] > 0 for r in out.records)


def test_cross_entropy_option_trains(digits: data.Dataset) -> None:
    net = small_net()
    out = train.train(net, digits.X_train, digits.labels_train, loss="cross_entropy", lr=0.2,
                      batch_size=20, steps=60, measure_every=60, measure=None,
                      progress=False)  # fmt: skip
    assert out.final["train_loss"] < 0.5 * out.records[0]["train_loss"]
    assert out.final["train_acc"] > 0.9


def test_batchnorm_model_measured_in_eval_mode() -> None:
    d = data.load("digits", classes=[0, 1], n_train=24, n_test=8, dtype="float64")
    net = models.build("vgg10", (1, 8, 8), 2, width=1 / 32, batch_norm=True,
                       dtype=torch.float64)  # fmt: skip
    out = train.train(net, d.X_train, d.Y_train, lr=0.05, batch_size=8, steps=3,
                      measure_every=3, eval_size=8, progress=False,
                      measure=train.make_measure(("sharpness", "trace")))  # fmt: skip
    assert out.status == "completed" and net.training  # restored to train mode
    assert out.final["lambda_max"] > 0


def test_evaluate_is_exact_in_chunks(digits: data.Dataset) -> None:
    net = small_net()
    full = train.evaluate(net, digits.X_train, digits.Y_train, "squared", chunk=1000)
    chunked = train.evaluate(net, digits.X_train, digits.Y_train, "squared", chunk=7)
    assert full[0] == pytest.approx(chunked[0], rel=1e-13) and full[1] == chunked[1]


# ------------------------------------------------------------------------- schedules


def test_measurement_schedules() -> None:
    lin = train.measurement_steps(1000, 100, "linear")
    assert lin == list(range(0, 1001, 100))
    late = train.measurement_steps(1000, 100, "late")
    assert late[0] == 0 and late[-1] == 1000 and late == sorted(set(late))
    early, tail = [s for s in late if s < 500], [s for s in late if s >= 500]
    assert len(early) == 5 and len(tail) == 21 and tail[1] - tail[0] == 25  # 4× denser late
    log = train.measurement_steps(1000, 100, "log")
    assert log[:3] == [0, 1, 2] and log[-1] == 1000
    gaps = [b - a for a, b in zip(log, log[1:], strict=False)]
    assert gaps[-1] > gaps[1]  # log-spaced: sparse late
    assert train.measurement_steps(7, 5) == [0, 5, 7]  # the end is always measured


# ------------------------------------------------------------------------- divergence


def test_absurd_learning_rate_ends_diverged_without_exception(digits: data.Dataset) -> None:
    net = small_net()
    out = train.train(net, digits.X_train, digits.Y_train, lr=1e4, batch_size=8, steps=200,
                      measure_every=50, progress=False, eval_size=8)  # fmt: skip
    assert out.status == "diverged" and out.diverged_at is not None
    assert 0 < out.diverged_at < 50 and out.steps_done == out.diverged_at
    assert [r["step"] for r in out.records] == [0]  # no record of the exploded state
    summary = out.summary()
    assert summary["status"] == "diverged" and summary["diverged_at"] == out.diverged_at


# ------------------------------------------------------------------------- checkpoints


class Kill(Exception):
    pass


def _run(ds: data.Dataset, ckpt: Path | None, callback=None, **kw) -> train.TrainResult:  # noqa: ANN001
    net = small_net(seed=7)
    args = dict(lr=0.1, momentum=0.9, batch_size=8, steps=45, measure_every=10, seed=1,
                eval_size=16, progress=False, checkpoint_path=ckpt, checkpoint_every=20,
                checkpoint_meta={"id": "x"})  # fmt: skip
    args.update(kw)
    return train.train(net, ds.X_train, ds.Y_train, ds.X_test, ds.Y_test, callback=callback,
                       **args)  # fmt: skip


def test_interrupted_run_resumes_to_identical_numbers(digits: data.Dataset, tmp_path: Path) -> None:
    ref = _run(digits, None)
    ckpt = tmp_path / "ckpt.pt"

    def kill_at_27(step: int, model: nn.Module, rec: dict | None) -> None:
        if step == 27:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        _run(digits, ckpt, kill_at_27)
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 27 and [r["step"] for r in state["records"]] == [0, 10, 20]
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written temporary left behind
    resumed = _run(digits, ckpt)
    assert resumed.resumed_from == 27
    assert same(resumed.records, ref.records)  # every measured number, bit for bit
    assert all(torch.equal(a, b) for a, b in
               zip(params(resumed.model), params(ref.model), strict=True))  # fmt: skip
    # a finished checkpoint resumes to the same result without training
    again = _run(digits, ckpt)
    assert again.resumed_from == 45 and same(again.records, ref.records)


def test_sigterm_is_deferred_to_a_step_boundary_and_checkpointed(
    digits: data.Dataset, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt.pt"

    def term_at_13(step: int, model: nn.Module, rec: dict | None) -> None:
        if step == 13:
            os.kill(os.getpid(), signal.SIGTERM)

    old = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM at step 13"):
        _run(digits, ckpt, term_at_13)
    assert signal.getsignal(signal.SIGTERM) == old  # handler restored
    assert torch.load(ckpt, weights_only=True)["step"] == 13
    assert same(_run(digits, ckpt).records, _run(digits, None).records)


def test_other_exceptions_leave_the_last_periodic_checkpoint(
    digits: data.Dataset, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt.pt"

    def boom(step: int, model: nn.Module, rec: dict | None) -> None:
        if step == 25:
            raise Kill

    with pytest.raises(Kill):
        _run(digits, ckpt, boom)
    assert torch.load(ckpt, weights_only=True)["step"] == 20
    assert same(_run(digits, ckpt).records, _run(digits, None).records)


def test_checkpoint_of_another_run_is_refused(digits: data.Dataset, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt.pt"
    _run(digits, ckpt, steps=10)
    with pytest.raises(ValueError, match="different run"):
        _run(digits, ckpt, steps=10, checkpoint_meta={"id": "y"})


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"loss": "hinge"}, "loss"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"lr": 0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 61}, "batch_size"),
        ({"batch_size": "half"}, "batch_size"),
        ({"steps": 0}, "steps"),
        ({"measure_every": -1}, "measure_every"),
        ({"measure_every": 50, "steps": 10}, "measure_every"),
        ({"schedule": "cosine"}, "schedule"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"nesterov": True}, "nesterov"),
        ({"seed": -3}, "seed"),
        ({"target_loss": 0.0}, "target_loss"),
        ({"divergence_threshold": -1.0}, "divergence_threshold"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"eval_size": 0}, "eval_size"),
        ({"measure_at": [3, 99]}, "measure_at"),
        ({"lr": 1e-320}, "lr"),
        ({"optimizer": "adam", "momentum": 0.9}, "momentum"),
        ({"steps": 10.0}, "steps"),
        ({"eval_seed": -1}, "eval_seed"),
    ],
)
def test_bad_arguments_one_line_errors(digits: data.Dataset, kwargs: dict, param: str) -> None:
    args = {"steps": 10, "measure_every": 5, "progress": False, "measure": None, **kwargs}
    with pytest.raises(ValueError) as e:
        train.train(small_net(), digits.X_train, digits.Y_train, **args)
    msg = str(e.value)
    assert param in msg and "\n" not in msg


def test_squared_loss_needs_one_hot_targets(digits: data.Dataset) -> None:
    with pytest.raises(ValueError, match="one-hot"):
        train.train(small_net(), digits.X_train, digits.labels_train, steps=2, measure_every=1,
                    progress=False)  # fmt: skip


# ----------------------------------------------------------------------------- label noise
def test_label_noise_sgd_update_and_clean_records(digits: data.Dataset) -> None:
    """One label-noise SGD step equals a plain step on the targets y + σξ with ξ from the
    (seed, step) generator; records use the clean targets."""
    sigma, lr = 0.3, 0.1
    net = small_net(seed=3)
    ref = small_net(seed=3)
    r = train.train(net, digits.X_train, digits.Y_train, lr=lr, batch_size="full", steps=1,
                    measure_every=1, measure=None, progress=False, label_noise=sigma, seed=5)
    xi = train._label_noise(digits.Y_train, 5, 0)
    assert xi.shape == digits.Y_train.shape and abs(float(xi.std()) - 1) < 0.15
    loss = train.losses.get("squared")(ref(digits.X_train), digits.Y_train + sigma * xi)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    with torch.no_grad():
        for p, g in zip(ref.parameters(), grads, strict=True):
            p -= lr * g
    assert all(torch.allclose(a, b, atol=1e-14) for a, b in
               zip(net.parameters(), ref.parameters(), strict=True))
    clean = train.evaluate(net, digits.X_train, digits.Y_train, "squared")[0]
    assert r.records[-1]["train_loss"] == pytest.approx(clean, rel=1e-12)


def test_label_noise_resumes_bit_for_bit_and_differs_from_plain(
        digits: data.Dataset, tmp_path: Path) -> None:
    ref = _run(digits, None, label_noise=0.2)
    plain = _run(digits, None)
    assert not same(ref.records, plain.records)
    ckpt = tmp_path / "ln.pt"

    def kill_at_27(step: int, model: nn.Module, rec: dict | None) -> None:
        if step == 27:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        _run(digits, ckpt, kill_at_27, label_noise=0.2)
    assert same(_run(digits, ckpt, label_noise=0.2).records, ref.records)


@pytest.mark.parametrize("value", [-0.1, float("nan"), "0.1", True])
def test_label_noise_bad_values_are_named(digits: data.Dataset, value: object) -> None:
    with pytest.raises(ValueError, match="label_noise"):
        _run(digits, None, label_noise=value)


def test_label_noise_needs_the_squared_loss(digits: data.Dataset) -> None:
    with pytest.raises(ValueError, match="label_noise=0.1 needs loss='squared'"):
        train.train(small_net(), digits.X_train, digits.labels_train, loss="cross_entropy",
                    steps=2, measure_every=1, progress=False, label_noise=0.1)


# ----------------------------------------------------------------------------- options record


def test_options_record_and_keywords_train_identically(digits: data.Dataset) -> None:
    """The loop's parameters given as keywords or as a TrainOptions record (keywords
    overriding it) are the same run."""
    kw = dict(lr=0.05, batch_size=8, steps=12, measure_every=6, seed=3, progress=False,
              momentum=0.5)  # fmt: skip
    a = train.train(small_net(), digits.X_train, digits.Y_train, measure=None, **kw)
    opts = runspec.TrainOptions(**{**kw, "lr": 0.3})
    b = train.train(small_net(), digits.X_train, digits.Y_train, measure=None, options=opts,
                    lr=0.05)  # fmt: skip
    assert same(a.records, b.records) and len(a.records) == 3
    assert opts.replace(steps=24).measure_every == 6  # given: kept
    with pytest.raises(ValueError, match="measure_every=6 exceeds steps=4"):
        opts.replace(steps=4)
    assert runspec.TrainOptions(steps=40).measure_every == 40  # default 100 adapts to steps
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['learning_rate'\]"):
        train.train(small_net(), digits.X_train, digits.Y_train, learning_rate=0.1)
    with pytest.raises(TypeError, match="options must be a TrainOptions"):
        train.train(small_net(), digits.X_train, digits.Y_train, options={"lr": 0.1})


def test_adam_uses_its_own_betas_and_refuses_momentum(digits: data.Dataset) -> None:
    """Adam is torch.optim.Adam with β = (0.9, 0.999): one step equals a hand-built one."""
    net, ref = small_net(seed=2), small_net(seed=2)
    train.train(net, digits.X_train, digits.Y_train, optimizer="adam", lr=0.01,
                batch_size="full", steps=2, measure=None, progress=False)  # fmt: skip
    opt = torch.optim.Adam(ref.parameters(), lr=0.01, betas=(0.9, 0.999))
    for _ in range(2):
        opt.zero_grad()
        train.losses.get("squared")(ref(digits.X_train), digits.Y_train).backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters(), strict=True))
    with pytest.raises(ValueError, match="momentum=0.9 is an option of optimizer='sgd'"):
        train.check_train_args(optimizer="adam", momentum=0.9)
