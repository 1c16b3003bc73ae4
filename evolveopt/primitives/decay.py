"""Weight decay in its four published places (λ = weight decay, η_t = scheduled lr).

    l2            g ← g + λθ                       (torch.optim Adam/SGD ``weight_decay``)
    decoupled     θ ← θ(1 − η_t λ) before the step  (AdamW, Loshchilov & Hutter 2019)
    decoupled_after θ ← θ(1 − η_t λ) after the step  (pytorch-optimizer's LaProp)
    proximal      θ ← (θ − η_t u)/(1 + η_t λ)       (Adan, Xie et al. 2022, Algorithm 1)
    in_direction  u ← u + λθ before layer-wise scaling (LAMB paper: decay inside the trust ratio)
"""

from __future__ import annotations

from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Scalar, TensorList


def l2(grads: TensorList, params: TensorList, rate: Scalar) -> TensorList:
    return list(grads) if tl.is_zero(rate) else tl.added(grads, params, rate)


def decoupled_(params: TensorList, rate: Scalar, lr: Scalar) -> None:
    if not tl.is_zero(rate):
        tl.scale_(params, 1.0 - lr * rate)


def proximal_(params: TensorList, rate: Scalar, lr: Scalar) -> None:
    if not tl.is_zero(rate):
        tl.divide_(params, 1.0 + lr * rate)


def in_direction(direction: TensorList, params: TensorList, rate: Scalar) -> TensorList:
    return direction if tl.is_zero(rate) else tl.added(direction, params, rate)


# Stage functions (registry.py): ``(weight decay, flow, ctx)``.


def l2_stage(wd, flow, ctx) -> None:
    flow.grads = l2(flow.grads, flow.params, ctx.genes[wd.rate])


def decoupled_stage(wd, flow, ctx) -> None:
    decoupled_(flow.params, ctx.genes[wd.rate], ctx.lr)


def decoupled_after_stage(wd, flow, ctx) -> None:
    decoupled_(flow.params, ctx.genes[wd.rate], ctx.lr)


def proximal_stage(wd, flow, ctx) -> None:
    proximal_(flow.params, ctx.genes[wd.rate], ctx.lr)


def in_direction_stage(wd, flow, ctx) -> None:
    flow.direction = in_direction(flow.direction, flow.params, ctx.genes[wd.rate])
