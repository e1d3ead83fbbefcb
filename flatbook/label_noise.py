"""The noise ξ of label-noise SGD (targets y + σξ, ξ ~ N(0, I) for every minibatch).

ξ is a deterministic function of (seed, step, minibatch target shape [B, k]): steps are
grouped in blocks of :func:`block_steps` consecutive steps, and

    ξ(seed, step) = row (step mod S) of randn([S, B, k], float32) from a CPU generator
                    seeded by (seed, step // S)

so one generator call serves S steps (instead of one generator and one draw per step, which
cost more than the SGD step itself for a small network). The values are float32 numbers on
every device and in every dtype (exact in float64), and a resumed run draws the same ξ. The
solo loop (:func:`flatbook.train.train`) and the ensemble engine (:mod:`flatbook.ensemble`)
both call :func:`xi`, so a run's noise does not depend on the engine.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

MAX_BLOCK_STEPS = 64
"""Most steps per block of noise."""
MAX_BLOCK_NUMEL = 1 << 16
"""Most numbers per block (S · B · k): a full-batch run on a large data set draws per step."""


def block_steps(shape: tuple[int, ...]) -> int:
    """S, the steps per block for minibatch targets of ``shape``:
    min(MAX_BLOCK_STEPS, MAX_BLOCK_NUMEL // (B·k)), at least 1."""
    return max(1, min(MAX_BLOCK_STEPS, MAX_BLOCK_NUMEL // max(1, math.prod(shape))))


def _block_seed(seed: int, block: int) -> int:
    """The generator seed of block ``block`` of run ``seed``."""
    return (int(seed) * 1_000_003 + int(block)) % (2**63)


@functools.lru_cache(maxsize=256)
def _block(seed: int, block: int, shape: tuple[int, ...], dtype: torch.dtype,
           device: torch.device) -> Tensor:
    """ξ of the S steps of block ``block``, [S, *shape], in ``dtype`` on ``device``
    (cached: a run reads its current block S times; an ensemble holds one per member)."""
    g = torch.Generator().manual_seed(_block_seed(seed, block))
    draw = torch.randn((block_steps(shape), *shape), generator=g, dtype=torch.float32)
    return draw.to(device=device, dtype=dtype)


def block(seed: int, step: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
          device: torch.device | str = "cpu") -> Tensor:
    """ξ of the S = :func:`block_steps` (shape) steps of the block that holds ``step``,
    [S, B, k] (row j: step − step mod S + j), in ``dtype`` on ``device`` (read-only: cached)."""
    if isinstance(step, bool) or int(step) < 0:
        raise ValueError(f"step must be an integer ≥ 0; got {step!r}")
    shape = tuple(int(s) for s in shape)
    return _block(int(seed), int(step) // block_steps(shape), shape, dtype,
                  torch.device(device))


def xi(seed: int, step: int, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
       device: torch.device | str = "cpu") -> Tensor:
    """ξ(seed, step) ~ N(0, I) of minibatch targets of ``shape`` [B, k], in ``dtype`` on
    ``device`` (a read-only view of the cached block: do not modify it in place)."""
    return block(seed, step, shape, dtype, device)[int(step) % block_steps(tuple(shape))]


__all__ = ["MAX_BLOCK_NUMEL", "MAX_BLOCK_STEPS", "block", "block_steps", "xi"]
