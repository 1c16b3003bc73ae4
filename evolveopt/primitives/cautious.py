"""The cautious mask (Liang et al., "Cautious Optimizers", arXiv 2411.16085).

Keep the direction only where it agrees in sign with the gradient, and rescale what is kept so
the step keeps its size, per tensor (per population member when tensors are stacked):

    M = 1[u⊙g > 0]
    mean:      u ← u⊙M / max(mean(M), 10⁻³)     (C-AdamW of the paper's code; timm ``caution=True``)
    plus_one:  u ← u⊙M · n/(ΣM + 1)             (C-Lion; pytorch-optimizer ``cautious=True``)

with n the number of elements of the tensor. g is the gradient the terms read (after clipping,
L2 decay and the adaptor).
"""

from __future__ import annotations

import torch
from torch import Tensor

from evolveopt.primitives.tensorlist import TensorList

MEAN_FLOOR = 1e-3


def cautious_mask(direction: Tensor, grad: Tensor, kind: str, member_dims: int) -> Tensor:
    """M rescaled as ``kind`` says, shaped like ``direction``."""
    mask = torch.mul(direction, grad).gt_(0)  # 1.0 where they agree, in u's dtype: one new tensor
    kept = mask.flatten(member_dims).sum(-1)
    n = mask[(0,) * member_dims].numel() if member_dims else mask.numel()
    shape = kept.shape + (1,) * (mask.dim() - member_dims)
    if kind == "mean":
        return mask.div_(torch.clamp(kept / n, min=MEAN_FLOOR).reshape(shape))
    return mask.mul_((n / (kept + 1.0)).reshape(shape))


def cautious_(direction: TensorList, grads: TensorList, kind: str, member_dims: int) -> None:
    """u ← u⊙M (rescaled) in place, for every tensor."""
    torch._foreach_mul_(direction, [cautious_mask(u, g, kind, member_dims) for u, g in zip(direction, grads)])


def cautious_stage(value, flow, ctx) -> None:
    """Stage function (registry.py): masks ``flow.direction`` against ``flow.grads``."""
    cautious_(flow.direction, flow.grads, value.kind, ctx.member_dims)
