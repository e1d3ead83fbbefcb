"""Models. Every flatbook model is an ``nn.Sequential`` so that any layer boundary can be
named and the network split there (``flatbook.layers`` / ``flatbook.geometry`` use this for
per-layer measures; see DESIGN.md "Models are nn.Sequential").

Architectures (none uses BatchNorm or dropout by default: curvature needs a deterministic loss):

- :func:`mlp` — ``Sequential(Linear, act, …, Linear)`` (d → widths[1] → … → k).
- :func:`lenet5` — LeNet-5 (LeCun et al. 1998): conv 6@5×5, pool, conv 16@5×5, pool, dense
  120, 84, k. Paddings adapt so that 8×8 digits, 28×28 MNIST and 32×32 CIFAR all fit.
- :func:`vgg` — VGG-11 (Simonyan & Zisserman 2015, configuration "A": 8 conv + 3 dense) and
  the small VGG "VGG10" of paper v1 (our reading: 8 conv + 2 dense; the paper gives no table).
  Pools are skipped once the feature map is 1×1, so small inputs (8×8 digits) work.
- :func:`vit` — a small Vision Transformer (Dosovitskiy et al. 2021): items are
  ``PatchEmbed`` (patches → tokens, [n, T, D]), ``depth`` × ``Block`` (pre-LayerNorm attention +
  MLP), ``Pool`` (final LayerNorm, class token or mean over tokens, [n, D]) and a dense head.

:func:`rescale_layers` (from :mod:`flatbook.rescale`) returns a copy with one dense layer
scaled by a and the next by 1/a (the same function for ReLU networks; book ``lem-rescale``).

:func:`build` is the registry used by the training engine: ``build(name, input_shape,
n_classes, seed, **kw)``.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from flatbook._validate import check_choice, check_positive_int
from flatbook.keyword_form import resolve
from flatbook.rescale import POSITIVELY_HOMOGENEOUS as POSITIVELY_HOMOGENEOUS
from flatbook.rescale import rescale_layers as rescale_layers

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "linear": nn.Identity,
}


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Run the body with ``torch.manual_seed(seed)``, restoring the global CPU RNG afterwards."""
    if seed is None:
        yield
        return
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


def _check_activation(activation: str) -> None:
    """``activation`` one of :data:`ACTIVATIONS` (:func:`flatbook._validate.check_choice`)."""
    check_choice(activation, "activation", sorted(ACTIVATIONS))


def mlp(
    widths: Sequence[int],
    activation: str = "relu",
    bias: bool = True,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """Multilayer perceptron d → widths[1] → … → k as ``Sequential(Linear, act, …, Linear)``.

    Args:
        widths: layer sizes including input and output, e.g. ``[64, 32, 32, 10]``.
        activation: one of ``ACTIVATIONS``.
        seed: if given, parameters are initialised from ``torch.manual_seed(seed)``
            (PyTorch's default init), independently of the global RNG state.

    Input shape [n, d], output shape [n, k]; item 2j is the j-th dense layer.
    """
    widths = list(widths)
    if len(widths) < 2 or any(int(w) < 1 for w in widths):
        raise ValueError(f"widths must list ≥ 2 positive sizes (input … output); got {widths}")
    _check_activation(activation)
    with _seeded(seed):
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1], bias=bias))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        return nn.Sequential(*layers).to(dtype)


def _image_shape(input_shape: Sequence[int], name: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"input_shape for {name} must be (channels, height, width) with positive sizes; "
            f"got {tuple(input_shape)}"
        )
    return shape  # type: ignore[return-value]


def _check_classes(n_classes: int) -> int:
    """The output width k as a positive int (:func:`flatbook._validate.check_positive_int`)."""
    return int(check_positive_int(n_classes, "n_classes"))  # type: ignore[arg-type]


def _out_features(body: nn.Sequential, input_shape: Sequence[int], dtype: torch.dtype) -> int:
    with torch.no_grad():
        y = body.eval()(torch.zeros(1, *input_shape, dtype=dtype))
    body.train()
    return int(y[0].numel())


def lenet5(
    input_shape: Sequence[int] = (1, 28, 28),
    n_classes: int = 10,
    activation: str = "relu",
    pool: str = "max",
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """LeNet-5: conv(6, 5×5) → act → pool → conv(16, 5×5) → act → pool → flatten →
    dense 120 → act → dense 84 → act → dense k.

    Input [n, C, H, W], output [n, k]. The first conv is padded by 2 (the classic 32×32
    receptive field on 28×28 MNIST); the second conv is padded by 2 only when the pooled map is
    smaller than 10×10 (e.g. 8×8 digits), otherwise unpadded as in the original.

    Args:
        pool: ``"max"`` or ``"avg"`` (the original used subsampling ≈ average pooling).
    """
    C, H, W = _image_shape(input_shape, "lenet5")
    k = _check_classes(n_classes)
    _check_activation(activation)
    pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}
    if pool not in pools:
        raise ValueError(f"unknown pool {pool!r}; allowed: {sorted(pools)}")
    act = ACTIVATIONS[activation]
    pad2 = 0 if min(H, W) // 2 >= 10 else 2
    with _seeded(seed):
        feats: list[nn.Module] = [
            nn.Conv2d(C, 6, 5, padding=2),
            act(),
            pools[pool](2) if min(H, W) >= 2 else nn.Identity(),
            nn.Conv2d(6, 16, 5, padding=pad2),
            act(),
        ]
        body = nn.Sequential(*feats).to(dtype)
        with torch.no_grad():
            side = min(body(torch.zeros(1, C, H, W, dtype=dtype)).shape[-2:])
        if side >= 2:
            feats.append(pools[pool](2))
        feats.append(nn.Flatten())
        n_flat = _out_features(nn.Sequential(*feats).to(dtype), (C, H, W), dtype)
        layers = feats + [
            nn.Linear(n_flat, 120),
            act(),
            nn.Linear(120, 84),
            act(),
            nn.Linear(84, k),
        ]
        return nn.Sequential(*layers).to(dtype)


VGG_CONFIGS: dict[str, tuple[list[int | str], list[int]]] = {
    # name: (conv channels with "M" = 2×2 max-pool, hidden widths of the dense classifier)
    "vgg11": ([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], [512, 512]),
    "vgg10": ([64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M"], [512]),
}


def vgg(
    config: str = "vgg11",
    input_shape: Sequence[int] = (3, 32, 32),
    n_classes: int = 10,
    width: float = 1.0,
    activation: str = "relu",
    batch_norm: bool = False,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """VGG network: [conv3×3(pad 1) → act]… with 2×2 max-pools, flatten, dense classifier.

    ``config="vgg11"``: channels 64-M-128-M-256-256-M-512-512-M-512-512-M, classifier
    512 → 512 → k (8 conv + 3 dense = 11 weight layers). ``config="vgg10"`` (the small VGG of
    paper v1, our reading): 64-64-M-128-128-M-256-256-M-512-512-M, classifier 512 → k
    (8 conv + 2 dense). Input [n, C, H, W], output [n, k].

    Args:
        width: channel multiplier (e.g. 0.125 for CPU tests); every conv/hidden width is
            ``max(1, round(c · width))``.
        batch_norm: insert ``BatchNorm2d`` after each conv (off by default; with it, measure
            curvature in eval mode — the training engine does).
    """
    if config not in VGG_CONFIGS:
        raise ValueError(f"unknown VGG config {config!r}; allowed: {sorted(VGG_CONFIGS)}")
    C, H, W = _image_shape(input_shape, config)
    k = _check_classes(n_classes)
    _check_activation(activation)
    if not width > 0:
        raise ValueError(f"width (channel multiplier) must be > 0; got {width!r}")
    act = ACTIVATIONS[activation]
    convs, hidden = VGG_CONFIGS[config]
    with _seeded(seed):
        layers: list[nn.Module] = []
        c_in, side = C, min(H, W)
        for item in convs:
            if item == "M":
                if side >= 2:  # skip pools once the map is 1×1
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
                continue
            c_out = max(1, round(int(item) * width))
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(act())
            c_in = c_out
        layers.append(nn.Flatten())
        n_flat = _out_features(nn.Sequential(*layers).to(dtype), (C, H, W), dtype)
        for h in hidden:
            h = max(1, round(h * width))
            layers += [nn.Linear(n_flat, h), act()]
            n_flat = h
        layers.append(nn.Linear(n_flat, k))
        return nn.Sequential(*layers).to(dtype)


class PatchEmbed(nn.Module):
    """Image [n, C, H, W] → tokens [n, T, D]: non-overlapping p×p patches, linear embedding,
    optional class token prepended, learned position embedding added.

    T = (H/p)(W/p) (+1 with a class token).
    """

    def __init__(
        self, input_shape: Sequence[int], patch: int, dim: int, cls_token: bool = True
    ) -> None:
        super().__init__()
        C, H, W = input_shape
        self.proj = nn.Conv2d(C, dim, kernel_size=patch, stride=patch)
        n_tokens = (H // patch) * (W // patch) + (1 if cls_token else 0)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        if self.cls is not None:
            nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens [n, T, D] of images x [n, C, H, W]: patch embeddings (class token first)
        plus the position embedding."""
        z = self.proj(x).flatten(2).transpose(1, 2)  # [n, T, D]
        if self.cls is not None:
            z = torch.cat([self.cls.expand(z.shape[0], -1, -1), z], dim=1)
        return z + self.pos


class Attention(nn.Module):
    """Multi-head self-attention on [n, T, D] written with plain tensor ops (so that
    ``torch.func`` transforms, forward-over-reverse HVPs included, apply):
    softmax(Q Kᵀ/√(D/h)) V per head, then an output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention of tokens x [n, T, D]: out(softmax(Q Kᵀ/√(D/h)) V), [n, T, D]."""
        n, T, D = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(n, T, 3, h, D // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(D // h), dim=-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, T, D))


class Block(nn.Module):
    """Pre-LayerNorm transformer block on [n, T, D]: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, activation: str) -> None:
        super().__init__()
        hidden = max(1, round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        """x + Attn(LN(x)), then + MLP(LN(·)), on tokens [n, T, D]."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Pool(nn.Module):
    """Tokens [n, T, D] → [n, D]: final LayerNorm, then the class token (``"cls"``) or the mean
    over tokens (``"mean"``)."""

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        """LN(x) of tokens [n, T, D] pooled to [n, D] (class token or token mean)."""
        x = self.norm(x)
        return x[:, 0] if self.mode == "cls" else x.mean(dim=1)


@dataclass(frozen=True)
class ViTOptions:
    """The architecture of :func:`vit`: ``patch`` side p (must divide H and W), token width
    ``dim`` D, ``depth`` blocks, attention ``heads`` (must divide D), MLP hidden width
    ``mlp_ratio``·D, ``pool`` (``"cls"``: class token, ``"mean"``: mean over tokens) and the
    MLP's ``activation`` (a key of :data:`ACTIVATIONS`)."""

    patch: int = 4
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    pool: str = "cls"
    activation: str = "gelu"


def vit(
    input_shape: Sequence[int] = (3, 32, 32),
    n_classes: int = 10,
    *,
    options: ViTOptions | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    **flags: Any,
) -> nn.Sequential:
    """Small Vision Transformer ``Sequential(PatchEmbed, Block × depth, Pool, Linear)``.

    Input [n, C, H, W] with H, W divisible by ``patch``; tokens [n, T, D] between the blocks;
    ``Pool`` gives [n, D]; the head is a dense layer D → k (output [n, k]). Initialisation as in
    ViT/DeiT: every ``nn.Linear`` weight ~ truncated N(0, 0.02²), biases 0, position and class
    embeddings truncated N(0, 0.02²) (PyTorch's default fan-in init makes the initial squared-
    loss sharpness of a small ViT ~100× that of the MLP, so SGD at the MLP's rates diverges).

    Args:
        input_shape: (C, H, W); n_classes: k.
        options: a :class:`ViTOptions`; its fields (``patch``, ``dim``, ``depth``, ``heads``,
            ``mlp_ratio``, ``pool``, ``activation``) may be given as keywords instead, over
            ``options`` (an unknown keyword is a ``TypeError`` naming it).
        seed: initialisation seed (global RNG untouched; ``None``: the global RNG).
        dtype: parameter dtype.
    """
    o = resolve(ViTOptions, "vit", options, flags)
    C, H, W = _image_shape(input_shape, "vit")
    k = _check_classes(n_classes)
    _check_vit_options(o, H, W)
    with _seeded(seed):
        items: list[nn.Module] = [PatchEmbed((C, H, W), o.patch, o.dim,
                                             cls_token=o.pool == "cls")]
        items += [Block(o.dim, o.heads, o.mlp_ratio, o.activation) for _ in range(o.depth)]
        items += [Pool(o.dim, o.pool), nn.Linear(o.dim, k)]
        net = nn.Sequential(*items)
        for m in net.modules():  # ViT/DeiT initialisation of the token-wise linear maps
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        return net.to(dtype)


def _check_vit_options(o: ViTOptions, H: int, W: int) -> None:
    """``ValueError`` naming the first bad field of ``o`` for an H × W image."""
    _check_activation(o.activation)
    for pname in ("patch", "dim", "depth", "heads"):
        val = getattr(o, pname)
        if int(val) < 1 or int(val) != val:
            raise ValueError(f"{pname} must be a positive integer; got {val!r}")
    if H % o.patch or W % o.patch:
        raise ValueError(f"patch ({o.patch}) must divide the image size {H}×{W}")
    if o.dim % o.heads:
        raise ValueError(f"heads ({o.heads}) must divide dim ({o.dim})")
    if o.pool not in ("cls", "mean"):
        raise ValueError(f"unknown pool {o.pool!r}; allowed: ['cls', 'mean']")
    if not o.mlp_ratio > 0:
        raise ValueError(f"mlp_ratio must be > 0; got {o.mlp_ratio!r}")


# ---------------------------------------------------------------------------- registry


def _build_mlp(
    input_shape: Sequence[int],
    n_classes: int,
    seed: int | None,
    dtype: torch.dtype,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
    bias: bool = True,
) -> nn.Sequential:
    d = math.prod(int(s) for s in input_shape)
    if d < 1:
        raise ValueError(f"input_shape must have positive sizes; got {tuple(input_shape)}")
    k = _check_classes(n_classes)
    hidden = [hidden] if isinstance(hidden, int) else list(hidden)
    net = mlp([d, *hidden, k], activation=activation, bias=bias, seed=seed, dtype=dtype)
    if len(tuple(input_shape)) > 1:  # images: flatten first (dense layers keep their type)
        net = nn.Sequential(nn.Flatten(), *net)
    return net


def _build_vgg_cfg(config: str) -> Callable[..., nn.Sequential]:
    """Registry builder for the VGG layout ``config`` ("vgg11", "vgg10")."""
    return _build_image(functools.partial(vgg, config))


def _build_image(fn: Callable[..., nn.Sequential]) -> Callable[..., nn.Sequential]:
    def f(
        input_shape: Sequence[int],
        n_classes: int,
        seed: int | None,
        dtype: torch.dtype,
        **kw: Any,
    ) -> nn.Sequential:
        return fn(input_shape, n_classes, seed=seed, dtype=dtype, **kw)

    return f


MODELS: dict[str, Callable[..., nn.Sequential]] = {
    "mlp": _build_mlp,
    "lenet5": _build_image(lenet5),
    "vgg11": _build_vgg_cfg("vgg11"),
    "vgg10": _build_vgg_cfg("vgg10"),
    "vit": _build_image(vit),
}
"""Registry of :func:`build` names."""

MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden", "activation", "bias"),
    "lenet5": ("activation", "pool"),
    "vgg11": ("width", "activation", "batch_norm"),
    "vgg10": ("width", "activation", "batch_norm"),
    "vit": ("patch", "dim", "depth", "heads", "mlp_ratio", "pool", "activation"),
}
"""Keyword options each model accepts in :func:`build`."""

ALIASES: dict[str, str] = {"lenet": "lenet5", "vgg_small": "vgg10", "vit_small": "vit"}

IMAGE_MODELS = frozenset({"lenet5", "vgg11", "vgg10", "vit"})
"""Models that need image-shaped input (C, H, W); the MLP takes flat vectors."""


def canonical_name(name: str) -> str:
    """Registry name for ``name`` (aliases resolved); ValueError listing allowed names."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string; got {type(name).__name__}")
    key = ALIASES.get(name.lower(), name.lower())
    if key not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; allowed: {sorted(MODELS)} (aliases: {sorted(ALIASES)})"
        )
    return key


def build(
    name: str,
    input_shape: Sequence[int],
    n_classes: int,
    seed: int | None = 0,
    dtype: torch.dtype = torch.float32,
    **kw: Any,
) -> nn.Sequential:
    """Build a registered model: ``build("mlp", (64,), 10, seed=0, hidden=[32, 32])``.

    Args:
        name: one of ``MODELS`` (``mlp``, ``lenet5``, ``vgg11``, ``vgg10``, ``vit``) or an alias.
        input_shape: shape of one input without the batch axis — (d,) for flat vectors,
            (C, H, W) for images (the MLP flattens images with a leading ``nn.Flatten``).
        n_classes: output width k.
        seed: initialisation seed (global RNG untouched); ``None`` uses the global RNG.
        dtype: parameter dtype.
        **kw: model options, see ``MODEL_OPTIONS[name]``.
    """
    key = canonical_name(name)
    unknown = sorted(set(kw) - set(MODEL_OPTIONS[key]))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for model {key!r}; allowed: {list(MODEL_OPTIONS[key])}"
        )
    return MODELS[key](tuple(input_shape), n_classes, seed, dtype, **kw)
