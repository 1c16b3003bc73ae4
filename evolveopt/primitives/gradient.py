"""Gradient preprocessing and the signals terms average.

Functions take and return lists of tensors; none of them writes into the gradients it is given
(callers may still need ``p.grad``). State buffers are updated in place.
"""

from __future__ import annotations

import torch

from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Scalar, Step, TensorList


def clip_by_value(grads: TensorList, c: Scalar) -> TensorList:
    """g ← clamp(g, −c, c)."""
    if tl.is_float(c):
        return [g.clamp(-c, c) for g in grads]
    return [torch.minimum(torch.maximum(g, -tl.broadcast(c, g)), tl.broadcast(c, g)) for g in grads]


def clip_factor(norm: Scalar, c: Scalar) -> Scalar:
    """min(1, c/‖g‖): the factor that clips a norm to at most c (Adan, ALTO: global norm). c is made a
    tensor first: ``float / tensor`` multiplies by a reciprocal, a rounding apart from the true division a
    stacked member's ``[P]`` c gets."""
    norm = torch.clamp(torch.as_tensor(norm), min=1e-30)
    return torch.clamp(torch.as_tensor(c, dtype=norm.dtype, device=norm.device) / norm, max=1.0)


def clip_by_tensor_norm(grads: TensorList, c: Scalar, member_dims: int) -> TensorList:
    """g ← g·min(1, c/‖g‖) for each tensor."""
    factors = [clip_factor(n, c) for n in tl.member_norms(grads, member_dims)]
    return tl.scaled(grads, factors)


def clip_by_global_norm(grads: TensorList, factor: Scalar) -> TensorList:
    """g ← g·min(1, c/‖(g_1..g_n)‖); ``factor`` comes from :func:`clip_factor` over every tensor."""
    return tl.scaled(grads, factor)


def grad_diff(grads: TensorList, prev: TensorList, t: Step) -> TensorList:
    """d_t = g_t − g_{t−1}, with d_1 = 0 (Adan initialises g_0 to g_1); a tensor t multiplies by [t > 1]."""
    if not tl.is_float(t):
        diff = tl.added(grads, prev, -1.0)
        tl.scale_(diff, (t > 1).to(t.dtype))
        return diff
    if t == 1:
        return [torch.zeros_like(g) for g in grads]
    return tl.added(grads, prev, -1.0)


def nesterov_grad(grads: TensorList, diff: TensorList, beta: Scalar) -> TensorList:
    """g_t + β·d_t: Adan's Nesterov-corrected gradient (its second moment is of this signal)."""
    return tl.added(grads, diff, beta)


def corrected_grad(grads: TensorList, prev: TensorList, beta: Scalar, gamma: Scalar, clip: Scalar | None,
                   member_dims: int) -> TensorList:
    """MARS (Yuan et al. 2024, the approximate form): c = g + γ·β/(1−β)·(g_t − g_{t−1}) with g_0 = 0,
    then with ``clip`` τ, c ← c·min(1, τ/‖c‖) per tensor (pytorch-optimizer's MARS: τ = 1). New tensors."""
    diff = tl.added(grads, prev, -1.0)
    c = tl.added(grads, diff, tl.mul(gamma, beta / (1.0 - beta)))
    if clip is None:
        return c
    return tl.scaled(c, [clip_factor(n, clip) for n in tl.member_norms(c, member_dims)])


def adaptor(grads: TensorList, prev: TensorList, ema: TensorList, beta: Scalar, alpha: Scalar) -> TensorList:
    """ALTO's E (Zhao et al., NeurIPS 2025): a ← βa + (1−β)(g_t − g_{t−1}), g_0 = 0; ĝ = g + α·a.

    Updates ``prev`` ← g and ``ema`` ← a in place; returns ĝ.
    """
    diff = tl.added(grads, prev, -1.0)
    tl.lerp_(ema, diff, 1.0 - beta)
    torch._foreach_copy_(prev, grads)
    return tl.added(grads, ema, alpha)


# ----------------------------------------------------------------------------- locus stages
# Stage functions (registry.py): ``(locus value, flow, ctx)``; they replace ``flow.grads``.


def clip_stage(clip, flow, ctx) -> None:
    """clip: value | tensor_norm | global_norm (the global factor comes with ``ctx``)."""
    c = ctx.genes[clip.threshold]
    if clip.mode == "value":
        flow.grads = clip_by_value(flow.grads, c)
    elif clip.mode == "tensor_norm":
        flow.grads = clip_by_tensor_norm(flow.grads, c, ctx.member_dims)
    else:
        assert ctx.global_clip is not None, "global-norm clipping needs the factor over every parameter"
        flow.grads = clip_by_global_norm(flow.grads, ctx.global_clip)


def adaptor_stage(a, flow, ctx) -> None:
    flow.grads = adaptor(flow.grads, flow.state["adaptor.prev_grad"], flow.state["adaptor.diff_ema"],
                         ctx.genes[a.beta], ctx.genes[a.alpha])


# ----------------------------------------------------------------------------- signal rows
# A signal row's function (registry.PARTS["signal"]): ``(signal, source) -> x``, with ``source`` what a
# term reads (compile/rule.py SignalSource: grads, state, ctx, signal(kind), momentum()). None writes
# into what it reads.


def grad_signal(signal, source) -> TensorList:
    """x = g."""
    return source.grads


def grad_diff_signal(signal, source) -> TensorList:
    """x = g_t − g_{t−1} (0 at t = 1)."""
    return grad_diff(source.grads, source.state["prev_grad"], source.ctx.t)


def nesterov_grad_signal(signal, source) -> TensorList:
    """x = g_t + β·(g_t − g_{t−1}) (Adan)."""
    return nesterov_grad(source.grads, source.signal("grad_diff"), source.ctx.genes[signal.beta])


def corrected_grad_signal(signal, source) -> TensorList:
    """x = MARS's corrected gradient (:func:`corrected_grad`)."""
    genes = source.ctx.genes
    return corrected_grad(source.grads, source.state["prev_grad"], genes[signal.beta], genes[signal.gamma],
                          genes[signal.clip] if signal.clip else None, source.ctx.member_dims)


def residual_signal(signal, source) -> TensorList:
    """x = s − m: the term's own signal minus its momentum (AdaBelief's g − m), new tensors."""
    return tl.added(source.signal(source.term.signal), source.momentum(), -1.0)
