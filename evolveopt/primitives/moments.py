"""First-moment statistics of a signal x (momentum buffers m, updated in place).

Each is a registry row's function (registry.PARTS["momentum"]): ``fn(momentum, buffers, x, ctx)``
with the row's buffers (its slots, in order) and the step's context (genes, t). Each returns the term's numerator as a list of ``(coefficient, tensors)`` parts whose sum is the
output, so a bias correction stays a scalar factor instead of a pass over memory.
"""

from __future__ import annotations

import torch

from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Factor, Scalar, Step, TensorList

Parts = list[tuple[Factor, TensorList]]


def ema_update_(m: TensorList, x: TensorList, beta: Scalar, dampening: bool) -> None:
    """m ← βm + (1−β)x (dampening), or m ← βm + x (heavy ball, torch SGD momentum)."""
    if dampening:
        tl.lerp_(m, x, 1.0 - beta)
    else:
        tl.scale_(m, beta)
        torch._foreach_add_(m, x)


def ema(mom, buffers: list[TensorList], x: TensorList, ctx) -> Parts:
    """EMA momentum (Polyak; Adam's first moment): out m, or m/(1−β^t) with bias correction."""
    (m,), beta, t = buffers, ctx.genes[mom.beta], ctx.t
    ema_update_(m, x, beta, mom.dampening)
    return [(1.0 / (1.0 - tl.power(beta, t)) if mom.bias_correction else 1.0, m)]


def nesterov(mom, buffers: list[TensorList], x: TensorList, ctx) -> Parts:
    """Nesterov look-ahead (Sutskever et al. 2013; torch SGD): out (1−β)x + βm or x + βm."""
    (m,), beta, t = buffers, ctx.genes[mom.beta], ctx.t
    ema_update_(m, x, beta, mom.dampening)
    scale = 1.0 / (1.0 - tl.power(beta, t)) if mom.bias_correction else 1.0
    return [(tl.mul(scale, 1.0 - beta if mom.dampening else 1.0), x), (tl.mul(scale, beta), m)]


def interp(mom, buffers: list[TensorList], x: TensorList, ctx) -> Parts:
    """Lion (Chen et al. 2023): c = μ·m_{t−1} + (1−μ)x, then m ← βm + (1−β)x; out c."""
    (m,), beta, mix = buffers, ctx.genes[mom.beta], ctx.genes[mom.mix]
    c = tl.clone(m)
    tl.lerp_(c, x, 1.0 - mix)
    tl.lerp_(m, x, 1.0 - beta)
    return [(1.0, c)]


def nadam_mu(beta: Scalar, decay: Scalar, t: Step) -> Scalar:
    """μ_t = β(1 − ½·0.96^{tψ}) (Dozat 2016, as in torch.optim.NAdam)."""
    return beta * (1.0 - 0.5 * tl.power(0.96, t * decay))


def nadam(mom, buffers: list[TensorList], x: TensorList, ctx) -> Parts:
    """NAdam momentum: m ← βm + (1−β)x; Πμ ← Πμ·μ_t (``mu_products``, its second buffer, in place);
    out (1−μ_t)/(1−Πμ)·x + μ_{t+1}/(1−Πμ·μ_{t+1})·m.

    Each tensor keeps its own product (torch convention); within one call they are equal, so
    the first is read: a host float for one model with a Python-int t, else a tensor (0-d with a
    tensor t, so no ``.item()``; per member for a population).
    """
    (m, mu_products), beta, decay, t = buffers, ctx.genes[mom.beta], ctx.genes[mom.decay], ctx.t
    mu, mu_next = nadam_mu(beta, decay, t), nadam_mu(beta, decay, t + 1)
    torch._foreach_mul_(mu_products, mu if tl.is_float(mu) else [mu.to(p) for p in mu_products])
    first = mu_products[0]
    product: Scalar = first.item() if first.ndim == 0 and tl.is_float(mu) else first
    tl.lerp_(m, x, 1.0 - beta)
    return [((1.0 - mu) / (1.0 - product), x), (mu_next / (1.0 - product * mu_next), m)]
