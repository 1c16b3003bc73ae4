"""Per-tensor ("layer-wise") rescaling of the direction u, and diffGrad friction.

"Layer" means one parameter tensor (per population member when tensors are stacked).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Scalar, TensorList


def trust_ratio(params: TensorList, direction: TensorList, clamp: Scalar | None, eps: Scalar | None,
                member_dims: int, lr: Scalar | None = None) -> list[Tensor]:
    """LAMB (You et al., ICLR 2020): τ = min(‖θ‖, clamp)/(‖u‖ + ε); τ = 1 where either norm is 0.

    With ``lr`` given, ‖θ − η u‖ replaces ‖u‖ (the RaLamb/EVE variant). Returns one τ per tensor.
    """
    weight_norms = tl.member_norms(params, member_dims)
    if clamp is not None:
        weight_norms = [torch.clamp(w, max=clamp) if tl.is_float(clamp) else torch.minimum(w, clamp.to(w))
                        for w in weight_norms]
    other = direction if lr is None else tl.added(params, direction, -lr)
    other_norms = tl.member_norms(other, member_dims)
    ratios = []
    for w, u in zip(weight_norms, other_norms):
        ratio = w / (u + eps) if eps is not None else w / u
        ratios.append(torch.where((w > 0) & (u > 0), ratio, torch.ones_like(ratio)))
    return ratios


def rms_norm_factors(direction: TensorList, eps: Scalar, member_dims: int) -> list[Tensor]:
    """1/(rms(u) + ε) per tensor, rms(u) = ‖u‖/√n."""
    norms = tl.member_norms(direction, member_dims)
    sizes = tl.member_numels(direction, member_dims)
    return [1.0 / (n / math.sqrt(size) + eps) for n, size in zip(norms, sizes)]


def friction(grads: TensorList, prev: TensorList, mode: str, member_dims: int) -> list[Tensor] | TensorList:
    """diffGrad (Dubey et al. 2019): ξ = sigmoid(|g_t − g_{t−1}|) element-wise, g_0 = 0.

    ``tensor`` mode uses the per-tensor norm, ξ = sigmoid(‖g_t − g_{t−1}‖) (EVE's variant).
    Returns element-wise factors (a TensorList) or one factor per tensor.
    """
    diff = tl.added(grads, prev, -1.0)
    if mode == "elementwise":
        torch._foreach_abs_(diff)
        torch._foreach_sigmoid_(diff)
        return diff
    return [torch.sigmoid(n) for n in tl.member_norms(diff, member_dims)]


# Stage functions (registry.py): ``(locus value, flow, ctx)``; they rescale ``flow.direction``.


def layerwise_stage(lw, flow, ctx) -> None:
    genes, u = ctx.genes, flow.direction
    if lw.kind == "trust_ratio":
        tau = trust_ratio(flow.params, u, clamp=genes[lw.clamp] if lw.clamp else None,
                          eps=genes[lw.eps] if lw.eps else None, member_dims=ctx.member_dims,
                          lr=ctx.lr if lw.norm_of == "new_weights" else None)
        tl.scale_(u, tau)
    else:
        tl.scale_(u, rms_norm_factors(u, genes[lw.eps], ctx.member_dims))


def friction_stage(mode: str, flow, ctx) -> None:
    """ξ from g and the previous gradient (the rule stores g after the direction stage)."""
    xi = friction(flow.grads, flow.state["prev_grad"], mode, ctx.member_dims)
    if mode == "elementwise":
        torch._foreach_mul_(flow.direction, xi)
    else:
        tl.scale_(flow.direction, xi)
