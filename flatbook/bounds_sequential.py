"""The statements that need an ``nn.Sequential`` model: a layer boundary there is an item
index, so the network splits into head = model[:i] and tail = model[i:] (DESIGN.md).

- :func:`relative_flatness` — κ_l of T5 by its definition (Hessian blocks of W_l), its
  Laplacian form or the T5 identity; :func:`t5_identity` compares the first and the last;
- :func:`l2_identity` — L2, ‖∇_{W_l} f‖_F = ‖G_l‖_F ‖h_{l−1}‖, per dense layer and sample;
- :func:`shared_weight_terms` — the tied and untied terms of a shared-weight layer
  (convolution, patch embedding, token-wise linear map; ours).

Any ``nn.Module`` works with :func:`flatbook.bounds.quantities` and the bounds computed from
it; these functions refuse other models (:func:`flatbook.layers.check_sequential`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import hessian, vmap

from flatbook import curvature, losses
from flatbook import geometry as _geometry
from flatbook import layers as _layers
from flatbook import models as _models
from flatbook._functional import forward_fn, named_params
from flatbook.bounds_quantities import Quantities
from flatbook.bounds_types import Bound, Identity

__all__ = ["KAPPA_METHODS", "SharedWeightTerms", "l2_identity", "relative_flatness",
           "shared_weight_terms", "t5_identity"]


def _dense(model: nn.Sequential, X: Tensor, layer: str | int) -> _layers.DenseLayer:
    """The dense layer of ``model`` named ``layer`` (``"l1"``) or at item index ``layer``."""
    dl = _layers.dense_layers(model, X)
    for d in dl:
        if (isinstance(layer, str) and layer == d.name) or (
            isinstance(layer, int) and not isinstance(layer, bool) and layer == d.index
        ):
            return d
    raise ValueError(
        f"unknown dense layer {layer!r}; allowed names {[d.name for d in dl]} "
        f"or item indices {[d.index for d in dl]}"
    )


KAPPA_METHODS = ("hessian", "laplacian", "gn")


def relative_flatness(
    model: nn.Sequential,
    X: Tensor,
    layer: str | int,
    Y: Tensor | None = None,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "squared",
    method: str = "hessian",
    hessian_matrix: Tensor | None = None,
) -> Tensor:
    """Relative flatness κ_l = Σ_{s,s'} ⟨w_s, w_{s'}⟩ tr(H_{s,s'}) of dense layer l (T5).

    w_s ∈ R^p are the rows of W_l ∈ R^{m×p}, H_{s,s'} = ∂²L/∂w_s∂w_{s'} ∈ R^{p×p} the Hessian
    blocks of the loss L = (1/n) Σ ℓ(f(x_i), y_i). Methods:

    - ``"hessian"`` — the definition: the exact Hessian of L with respect to W_l alone
      ([mp, mp], small layers only), κ = Σ_{s,s'} (W Wᵀ)_{ss'} Σ_a H[(s,a),(s',a)].
    - ``"laplacian"`` — an exact equivalent at any θ (ours): since L depends on W_l only via
      z = W h + b, tr H_{s,s'} = (1/n) Σ_i ‖h_i‖² (∇²_z ℓ_i)_{ss'} and so
      κ_l = (1/n) Σ_i ‖h_{l−1}(x_i)‖² tr ∇²_h ℓ(f, y_i) (per-sample p×p Hessians in h).
    - ``"gn"`` — the T5 identity, exact at interpolation for the squared loss:
      κ_l = (1/n) Σ_i ‖h_{l−1}‖² ‖∂f/∂h_{l−1}‖_F² (no targets needed).

    Args:
        layer: dense-layer name (``"l1"``) or item index.
        Y: targets [n, k]; default f(X) (exact interpolation).
        loss: ``"squared"`` (the bounds' loss), ``"cross_entropy"`` or a callable.
        hessian_matrix: optional precomputed dense Hessian [P, P] of the same loss and data
            (``named_parameters`` order, e.g. ``l1_identity(...).lhs``) for ``"hessian"``: its
            W_l block is used instead of differentiating again.
    """
    if method not in KAPPA_METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {list(KAPPA_METHODS)}")
    model = _layers.check_sequential(model)
    dl = _dense(model, X, layer)
    loss_fn = losses.get(loss)
    with curvature.eval_mode(model):
        with torch.no_grad():
            H = dl.head(X)
            if Y is None:
                Y = model(X)
        h_sq = H.reshape(H.shape[0], -1).pow(2).sum(1)
        if method == "gn":
            J = _geometry.input_jacobian(dl.tail, H)
            return (h_sq * J.pow(2).sum((1, 2))).mean().detach()
        if method == "laplacian":
            return _kappa_laplacian(dl.tail, H, Y, h_sq, loss_fn)
        return _kappa_definition(model, X, Y, dl.weight_name, loss_fn, hessian_matrix)


def _kappa_laplacian(tail: nn.Module, H: Tensor, Y: Tensor, h_sq: Tensor,
                     loss_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """κ_l = (1/n) Σ_i ‖h_i‖² tr ∇²_h ℓ(tail(h_i), y_i), from per-sample Hessians in h
    ([n, p, p]; H = h_{l−1}(X) [n, p], h_sq = ‖h_i‖² [n])."""

    def ell(h: Tensor, y: Tensor) -> Tensor:
        return loss_fn(tail(h.unsqueeze(0)), y.unsqueeze(0))

    with torch.no_grad():
        Hh = vmap(hessian(ell))(H, Y)  # [n, p, p]
    return (h_sq * torch.diagonal(Hh, dim1=1, dim2=2).sum(1)).mean().detach()


def _weight_block(hessian_matrix: Tensor, params: dict[str, Tensor], weight_name: str
                  ) -> Tensor:
    """The [mp, mp] block of the dense Hessian [P, P] (``named_parameters`` order) that
    belongs to the weight ``weight_name`` [m, p]."""
    P = sum(v.numel() for v in params.values())
    if tuple(hessian_matrix.shape) != (P, P):
        raise ValueError(
            f"hessian_matrix must have shape [P, P] = [{P}, {P}]; "
            f"got {tuple(hessian_matrix.shape)}"
        )
    start = 0
    for name, v in params.items():
        if name == weight_name:
            break
        start += v.numel()
    sl = slice(start, start + params[weight_name].numel())
    return hessian_matrix[sl, sl]


def _kappa_definition(model: nn.Sequential, X: Tensor, Y: Tensor, weight_name: str,
                      loss_fn: Callable[[Tensor, Tensor], Tensor],
                      hessian_matrix: Tensor | None) -> Tensor:
    """κ_l = Σ_{s,s'} (W Wᵀ)_{ss'} Σ_a H[(s,a),(s',a)], H the Hessian of the loss with respect
    to W_l [m, p] alone ([mp, mp]; the block of ``hessian_matrix`` when given)."""
    params = named_params(model)
    W = params[weight_name]
    m, p = W.shape
    if hessian_matrix is not None:
        Hw = _weight_block(hessian_matrix, params, weight_name).reshape(m, p, m, p)
    else:
        f = forward_fn(model)

        def L(w: Tensor) -> Tensor:
            return loss_fn(f({**params, weight_name: w}, X), Y)

        with torch.no_grad():
            Hw = hessian(L)(W).reshape(m, p, m, p)
    T = torch.einsum("sata->st", Hw)
    return ((W @ W.T) * T).sum().detach()


def t5_identity(
    model: nn.Sequential, X: Tensor, layer: str | int, Y: Tensor | None = None
) -> Identity:
    """T5 identity (ours): κ_l (Hessian blocks) = (1/n) Σ ‖h_{l−1}‖² ‖∂f/∂h_{l−1}‖_F² at
    interpolation (Y = f(X), the default), squared loss."""
    return Identity(
        f"t5_identity_{_dense(model, X, layer).name}",
        relative_flatness(model, X, layer, Y, method="hessian"),
        relative_flatness(model, X, layer, Y, method="gn"),
        "Σ_{s,s'} ⟨w_s, w_s'⟩ tr H_{s,s'} = (1/n) Σ ‖h_{l−1}‖² ‖∂f/∂h_{l−1}‖_F²",
        "ours",
    )




def l2_identity(
    model: nn.Sequential, X: Tensor, q: Quantities | None = None, method: str = "auto"
) -> dict[str, Identity]:
    """L2 per dense layer and sample: ‖∇_{W_l} f(x_i)‖_F = ‖G_i‖_F ‖h_{l−1}(x_i)‖.

    lhs from the parameter Jacobian (:func:`flatbook.curvature.jacobian_sqnorms`), rhs from an
    input Jacobian G = ∂f/∂z of the rest of the network at z = W h + b.
    Returns ``{"l1": Identity, …}`` with tensors [n]. ``q`` (of the same model and X) reuses
    its parameter-Jacobian norms. ``method`` is passed to ``jacobian_sqnorms`` when ``q`` is
    None: its default ``"auto"`` computes dense-layer norms by ghost norms, i.e. as
    ‖δ‖²‖h‖² — L2 itself — so for an *independent* check of the identity use
    ``method="jacrev"`` (per-sample autograd Jacobians of every parameter).
    """
    model = _layers.check_sequential(model)
    out = {}
    with curvature.eval_mode(model):
        if q is None:
            sq = curvature.jacobian_sqnorms(model, X, method=method)
        else:
            sq = {d.layer.weight_name: q.grad_w_sqnorm[k] for k, d in q.layers.items()}
        for d in _layers.dense_layers(model, X):
            with torch.no_grad():
                H = d.head(X)
                Z = model[d.index](H)
            G = _geometry.input_jacobian(model[d.index + 1 :], Z)
            out[d.name] = Identity(
                f"lem2_{d.name}",
                sq[d.weight_name].sqrt(),
                G.pow(2).sum((1, 2)).sqrt() * H.reshape(H.shape[0], -1).norm(dim=1),
                "‖∇_W f‖_F = ‖G‖_F ‖h‖",
                "paper (Ma & Ying 2021)",
            )
    return out


# ----------------------------------------------------------------------------- shared weights


@dataclass(frozen=True)
class SharedWeightTerms:
    """The terms of a shared-weight layer z_t = W h_t + b, t = 1…T (book ``lem-shared``; ours,
    not the paper's), per sample. Computed by :func:`shared_weight_terms`.

    Attributes:
        tied: [n] ‖∇_W f(x_i)‖_F² from the parameter Jacobian (the block of J_i that the
            Hessian of the tied network sees).
        from_terms: [n] the same from G_t and h_t: ‖Σ_t G_tᵀ h_tᵀ‖_F² =
            Σ_{t,t'} ⟨G_t, G_{t'}⟩_F ⟨h_t, h_{t'}⟩ (eq. ``eq-shared-grad``; equals ``tied``).
        untied: [n] U = Σ_t ‖G_t‖_F² ‖h_t‖² (the squared gradient norm of the *untied* network,
            one copy W_t = W per position).
        sensitivity: [n] Σ_t ‖h_t‖² ‖G_t W‖_F² (position-wise input sensitivity).
        weight_sqnorm: 0-d ‖W‖₂² (W reshaped to [m, p]).
        T: number of positions.
        weight_name: the parameter name of W (``named_parameters``).
        patches: [n, p, T] the patches h_t (columns), in the order of the layer's outputs.
        G: [n, k, m, T] the sensitivities G_t = ∂f/∂z_t.
    """

    tied: Tensor
    from_terms: Tensor
    untied: Tensor
    sensitivity: Tensor
    weight_sqnorm: Tensor
    T: int
    weight_name: str
    patches: Tensor = field(repr=False)
    G: Tensor = field(repr=False)

    def grad_identity(self) -> Identity:
        """``eq-shared-grad``: ‖∇_W f‖_F² (parameter Jacobian) = Σ_{t,t'}⟨G_t,G_t'⟩⟨h_t,h_t'⟩."""
        return Identity(
            "shared_grad", self.tied, self.from_terms,
            "‖∇_W f‖_F² = Σ_{t,t'} ⟨G_t, G_t'⟩_F ⟨h_t, h_t'⟩", "ours",
        )

    def position_wise(self) -> Bound:
        """``eq-shared-untied``, left: Σ_t ‖h_t‖² ‖G_t W‖_F² ≤ ‖W‖₂² U, per sample."""
        return Bound(
            "shared_position_wise", self.sensitivity, self.weight_sqnorm * self.untied,
            "Σ_t ‖h_t‖² ‖G_t W‖_F² ≤ ‖W‖₂² Σ_t ‖G_t‖_F² ‖h_t‖²", "ours",
        )

    def tied_le_untied(self) -> Bound:
        """``eq-shared-untied``, right: ‖∇_W f‖_F² ≤ T U, per sample."""
        return Bound(
            "shared_tied", self.tied, self.T * self.untied,
            "‖∇_W f‖_F² ≤ T Σ_t ‖G_t‖_F² ‖h_t‖²", "ours",
        )


_SHARED_KINDS = (
    "nn.Conv1d, nn.Conv2d (groups=1, zero padding), flatbook.models.PatchEmbed, nn.Linear"
)


def _shared_layer(item: nn.Module) -> tuple[nn.Conv1d | nn.Conv2d | nn.Linear, bool]:
    """(the module holding W, whether the item's output is tokens [n, T', m] ending in z_t)."""
    if isinstance(item, _models.PatchEmbed):
        return item.proj, True
    if isinstance(item, (nn.Conv1d, nn.Conv2d)):
        if item.groups != 1 or item.padding_mode != "zeros" or isinstance(item.padding, str):
            raise ValueError(
                f"shared_weight_terms supports convolutions with groups=1, "
                f"padding_mode='zeros' and integer padding; got groups={item.groups}, "
                f"padding_mode={item.padding_mode!r}, padding={item.padding!r}"
            )
        return item, False
    if isinstance(item, nn.Linear):
        return item, True
    raise ValueError(f"item must be one of {_SHARED_KINDS}; got {type(item).__name__}")


def _patches(layer: nn.Conv1d | nn.Conv2d | nn.Linear, H: Tensor) -> Tensor:
    """The inputs h_t [n, p, T] of the shared-weight ``layer`` at its T positions, from its
    input H: the tokens of a token-wise ``nn.Linear`` (H [n, …, p]), the patches of a
    convolution as ``F.unfold`` extracts them (H [n, C, L] or [n, C, H, W])."""
    if isinstance(layer, nn.Linear):
        return H.reshape(H.shape[0], -1, H.shape[-1]).transpose(1, 2)
    if isinstance(layer, nn.Conv1d):
        return F.unfold(H.unsqueeze(2), (1, *layer.kernel_size), dilation=(1, *layer.dilation),
                        padding=(0, *layer.padding), stride=(1, *layer.stride))
    return F.unfold(H, layer.kernel_size, dilation=layer.dilation, padding=layer.padding,
                    stride=layer.stride)


def shared_weight_terms(
    model: nn.Sequential, X: Tensor, item: int = 0, chunk: int | None = 256
) -> SharedWeightTerms:
    """Tied and untied gradient terms of the shared-weight layer ``model[item]`` (ours).

    A shared-weight layer computes z_t = W h_t + b at positions t = 1…T, where h_t = P_t h ∈ R^p
    is a linear read-out of the item's input h = ``model[:item](x)`` (a patch of a convolution,
    as ``F.unfold`` extracts it; a token of a token-wise ``nn.Linear``; a patch of a ViT patch
    embedding), W ∈ R^{m×p} and G_t = ∂f/∂z_t ∈ R^{k×m}. Then (book ``lem-shared``)

        ∇_W f_c = Σ_t (G_t)_{c,:}ᵀ h_tᵀ,     ‖∇_W f‖_F² = Σ_{t,t'} ⟨G_t, G_{t'}⟩_F ⟨h_t, h_{t'}⟩,
        Σ_t ‖h_t‖² ‖G_t W‖_F² ≤ ‖W‖₂² U,     ‖∇_W f‖_F² ≤ T U,     U = Σ_t ‖G_t‖_F² ‖h_t‖².

    For T = 1 (a dense layer, or a convolution whose kernel covers its whole input) U is the
    tied norm and this is the multiplicative identity L2. **This analysis is ours, not the
    paper's**: the paper proves its bounds for dense layers only (paper.md "Shared weights");
    the cross terms can cancel, so the *tied* norm — what the Hessian sees — does not bound
    sensitivity in general (book ``thm-shared-counterexample``).

    Args:
        model: an ``nn.Sequential`` with output [n, k]; the network must depend on the layer only
            through its output (true for every flatbook model).
        X: inputs [n, …].
        item: index of the layer in ``model``: an ``nn.Conv1d``/``nn.Conv2d`` (groups = 1, zero
            integer padding; any stride and dilation), a :class:`flatbook.models.PatchEmbed`
            (its ``proj``; z_t are the last T tokens, a class token and the position embedding
            are additive), or an ``nn.Linear`` (on [n, p]: T = 1; on [n, …, p]: one position per
            token). Its weight must be trainable.
        chunk: samples per vectorised call (``None``: automatic) of the input Jacobian G and the
            parameter Jacobian (:func:`flatbook.geometry.input_jacobian`,
            :func:`flatbook.curvature.jacobian_sqnorms`).

    Returns:
        :class:`SharedWeightTerms` (tensors [n]; ``.grad_identity()``, ``.position_wise()``,
        ``.tied_le_untied()`` give both sides as :class:`Identity` / :class:`Bound`).
    """
    model = _layers.check_sequential(model)
    if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < len(model):
        raise ValueError(f"item must be an index 0 … {len(model) - 1} of model; got {item!r}")
    layer, tokens = _shared_layer(model[item])
    wname = next((k for k, v in model.named_parameters() if v is layer.weight), None)
    if wname is None or not layer.weight.requires_grad:
        raise ValueError(f"the weight of model[{item}] must be a trainable parameter")
    n, m = X.shape[0], layer.weight.shape[0]
    with curvature.eval_mode(model):
        with torch.no_grad():
            H = model[:item](X)
            Z = model[item](H)  # conv: [n, m, *spatial]; tokens: [n, …, m]
        h = _patches(layer, H)
        T, Wm = h.shape[2], layer.weight.detach().reshape(m, -1)  # W: [m, p]
        G = _geometry.input_jacobian(model[item + 1 :], Z, chunk=chunk)
        G = G.reshape(n, -1, *Z.shape[1:])
        if tokens:
            G = G.reshape(n, G.shape[1], -1, m)[:, :, -T:].transpose(2, 3)  # [n, k, m, T]
        else:
            G = G.flatten(3)
        tied = curvature.jacobian_sqnorms(model, X, chunk)[wname]
    from_terms = torch.einsum("nkmt,npt->nkmp", G, h).pow(2).sum((1, 2, 3))
    hsq, gsq = h.pow(2).sum(1), G.pow(2).sum((1, 2))  # [n, T]
    sens = (hsq * torch.einsum("nkmt,mp->nktp", G, Wm).pow(2).sum((1, 3))).sum(1)
    return SharedWeightTerms(
        tied=tied,
        from_terms=from_terms,
        untied=(gsq * hsq).sum(1),
        sensitivity=sens,
        weight_sqnorm=torch.linalg.matrix_norm(Wm, ord=2) ** 2,
        T=int(T),
        weight_name=wname,
        patches=h,
        G=G,
    )
