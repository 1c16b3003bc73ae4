"""Schedule-free averaging (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
Scheduled", NeurIPS 2024, arXiv 2405.15682; the fast form of schedulefree 1.4.1).

The parameters θ hold y, the point where gradients are taken; z takes plain steps along the
rule's direction u; the point to evaluate, x, is an average of z and is never stored:

    lr_max ← max(lr_max, η_t);  w = t^r·lr_max^p;  S ← S + w;  c = w/S   (c = 0 while S = 0)
    y ← (1 − c)·y + c·z;   y ← y + η_t·(β(1 − c) − 1)·u;   z ← z − η_t·u   (z_0 = θ_0)
    x = (y − (1 − β)·z)/β                      (y = β·x + (1 − β)·z)

lr_max and S are per-member scalars kept with every parameter tensor (the tensors of one call
share a step count, so their copies agree and the first is read): a host float on the plain
``torch.optim`` path, otherwise tensors (0-d on the capturable/compiled path, ``[P]`` for a
population), computed without a host sync. Like evolveopt's step count t they are per
parameter tensor; schedulefree keeps k, lr_max and the weight sum per param group, which differs
only for a parameter that has no gradient in some steps.
"""

from __future__ import annotations

import torch

from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Factor, Scalar, Step, TensorList


def _pow(base: Scalar | Step, exponent: Scalar) -> Scalar:
    if tl.is_float(base) and tl.is_float(exponent):
        return base**exponent
    return torch.pow(base, exponent)


def average_weight_(lr_maxes: TensorList, weight_sums: TensorList, lr: Scalar, t: Step, r: Scalar,
                    power: Scalar) -> Scalar:
    """Advance lr_max and S in place (every tensor of the lists); return c = w/S."""
    if all(tl.is_float(s) for s in (lr, t, r, power)) and lr_maxes[0].ndim == 0:  # host scalars: no sync
        previous = lr_maxes[0].item()
        lr_max = max(previous, lr)
        weight = t**r * lr_max**power
        total = weight_sums[0].item() + weight
        if lr > previous:  # else every copy stays as it is (a constant lr raises it once)
            torch._foreach_clamp_min_(lr_maxes, lr)
        torch._foreach_add_(weight_sums, weight)
        return weight / total if total != 0 else 0.0
    first = lr_maxes[0]
    lr_max = torch.clamp(first, min=lr) if tl.is_float(lr) else torch.maximum(first, lr.to(first.dtype))
    weight = _pow(t, r) * _pow(lr_max, power)
    total = weight_sums[0] + weight
    torch._foreach_copy_(lr_maxes, [lr_max] * len(lr_maxes))
    torch._foreach_copy_(weight_sums, [total] * len(weight_sums))
    return torch.where(total > 0, weight / torch.where(total > 0, total, 1.0), 0.0)


def schedule_free_move_(y: TensorList, z: TensorList, u: TensorList, lr: Factor, beta: Scalar, c: Scalar) -> None:
    """y ← (1 − c)·y + c·z;  y ← y + η(β(1 − c) − 1)·u;  z ← z − η·u (in place; η may be per tensor)."""
    tl.lerp_(y, z, c)
    tl.add_scaled_(y, u, tl.mul(lr, beta * (1.0 - c) - 1.0))
    tl.add_scaled_(z, u, tl.mul(-1.0, lr))


def schedule_free_stage(value, flow, ctx) -> None:
    """Stage function (registry.py, stage ``move``): moves ``flow.params`` (y) and z along ``flow.direction``."""
    genes, state = ctx.genes, flow.state
    c = average_weight_(state["averaging.lr_max"], state["averaging.weight_sum"], ctx.lr, ctx.t,
                        genes[value.r], genes[value.lr_power])
    step = ctx.lr if flow.step_size is None else flow.step_size  # a relative step's α moves y and z (c keeps η_t)
    schedule_free_move_(flow.params, state["averaging.z"], flow.direction, step, genes[value.beta], c)


def to_eval_point_(params: TensorList, z: TensorList, beta: Scalar) -> None:
    """θ = y → x = (y − (1 − β)·z)/β in place, as schedulefree's ``eval()`` computes it."""
    tl.lerp_(params, z, 1.0 - 1.0 / beta)


def to_train_point_(params: TensorList, z: TensorList, beta: Scalar) -> None:
    """θ = x → y = β·x + (1 − β)·z in place (up to rounding; the optimizers restore a saved y instead)."""
    tl.lerp_(params, z, 1.0 - beta)
