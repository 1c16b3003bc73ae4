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


def rms_clip_factors(direction: TensorList, threshold: Scalar, member_dims: int) -> list[Tensor]:
    """1/max(1, rms(u)/d) per tensor (Adafactor's update clipping, Shazeer & Stern 2018, §6)."""
    norms = tl.member_norms(direction, member_dims)
    sizes = tl.member_numels(direction, member_dims)
    return [1.0 / torch.clamp(n / (math.sqrt(size) * tl.broadcast(threshold, n)), min=1.0)
            for n, size in zip(norms, sizes)]


def relative_step_sizes(params: TensorList, eps: Scalar, lr: Scalar, t, member_dims: int) -> list[Tensor]:
    """Adafactor's relative step α = max(ε2, rms(θ))·min(η_t, 1/√t) per tensor (per member), as
    torch.optim.Adafactor computes it: from θ before this step's weight decay."""
    norms = tl.member_norms(params, member_dims)
    sizes = tl.member_numels(params, member_dims)
    if tl.is_float(t):
        rho = min(lr, 1.0 / math.sqrt(t)) if tl.is_float(lr) else torch.clamp(lr, max=1.0 / math.sqrt(t))
    else:
        inv = torch.rsqrt(t)
        rho = torch.clamp(inv, max=lr) if tl.is_float(lr) else torch.minimum(lr, inv.to(lr.dtype))
    out = []
    for n, size in zip(norms, sizes):
        rms = n / math.sqrt(size)
        floor = tl.broadcast(eps, rms)
        rms = torch.clamp(rms, min=floor) if tl.is_float(floor) else torch.maximum(rms, floor.to(rms))
        out.append(rms * (rho if tl.is_float(rho) else rho.to(rms)))
    return out


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
    elif lw.kind == "rms_clip":
        tl.scale_(u, rms_clip_factors(u, genes[lw.threshold], ctx.member_dims))
    else:
        tl.scale_(u, rms_norm_factors(u, genes[lw.eps], ctx.member_dims))


def relative_step_stage(rs, flow, ctx) -> None:
    """The per-tensor step α that replaces η_t in θ ← θ − η_t·u (a weights-stage locus: it reads θ
    before decoupled decay changes it, as torch.optim.Adafactor does; the decay itself keeps η_t)."""
    flow.step_size = relative_step_sizes(flow.params, ctx.genes[rs.eps], ctx.lr, ctx.t, ctx.member_dims)


def friction_stage(mode: str, flow, ctx) -> None:
    """ξ from g and the previous gradient (the rule stores g after the direction stage)."""
    xi = friction(flow.grads, flow.state["prev_grad"], mode, ctx.member_dims)
    if mode == "elementwise":
        torch._foreach_mul_(flow.direction, xi)
    else:
        tl.scale_(flow.direction, xi)
