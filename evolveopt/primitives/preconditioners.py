"""Second-moment statistics and the division by their root (Adam family).

A term's numerator y is divided by a denominator built from a statistic v of a signal x:

    ema     v ← βv + (1−β)x²                         Adam, RMSprop (Kingma & Ba 2015)
    max     v ← βv + (1−β)x², v̄ ← max(v̄, v)          AMSGrad (Reddi et al. 2018)
    sum     v ← v + x²                               Adagrad (Duchi et al. 2011)
    belief  v ← βv + (1−β)x² + ε                     AdaBelief (Zhuang et al. 2020): ε enters the state

and eps placed as ``outside`` y/(d·√(v/bc) + ε), ``raw`` y·√bc/(d·√v + ε) (torch RAdam,
rectified AdaBelief), ``inside`` y/(d·√(v/bc + ε)) or ``clamp`` y/max(d·√(v/bc), ε) (ADOPT,
Taniguchi et al. 2024), with bc = 1 − β^t when bias-corrected and d Eve's loss-feedback factor
(1 without it); or with no ε as ``atan2``: a·atan2(y, b·d·√(v/bc)) (Adam-atan2, Everett et al. 2024,
"Scaling Exponents Across Parameterizations and Optimizers", arXiv 2407.05872).

A *stale* statistic (ADOPT) is read before it advances: the division uses v_{t−1}, v_0 = x_1²
(the first update runs with β = 0), and the term gives 0 at t = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Scalar, Step, TensorList


# ---------------------------------------------------------------------------- precondition rows
# A precondition row's function (registry.PARTS["precondition"]) advances its buffers (its slots, in
# order) in place: ``(pre, buffers, x, beta, eps, member_dims, first=0)``; ``first`` > 0 when another
# term sharing the leading buffers already advanced them this step. Its ``read`` function (default
# :func:`last_buffer`) gives what the root is taken of: ``(pre, buffers, eps, member_dims)``.


def ema_statistic_(pre, buffers: list[TensorList], x: TensorList, beta: Scalar, eps: Scalar | None,
                   member_dims: int, first: int = 0) -> None:
    """v ← βv + (1−β)x²."""
    (v,) = buffers
    tl.scale_(v, beta)
    tl.addcmul_(v, x, x, 1.0 - beta)


def max_statistic_(pre, buffers: list[TensorList], x: TensorList, beta: Scalar, eps: Scalar | None,
                   member_dims: int, first: int = 0) -> None:
    """v ← βv + (1−β)x² (unless a term sharing v advanced it), then v̄ ← max(v̄, v)."""
    v, vmax = buffers
    if first == 0:
        ema_statistic_(pre, [v], x, beta, eps, member_dims)
    torch._foreach_maximum_(vmax, v)


def sum_statistic_(pre, buffers: list[TensorList], x: TensorList, beta: Scalar | None, eps: Scalar | None,
                   member_dims: int, first: int = 0) -> None:
    """v ← v + x²."""
    torch._foreach_addcmul_(buffers[0], x, x)


def belief_statistic_(pre, buffers: list[TensorList], x: TensorList, beta: Scalar, eps: Scalar,
                      member_dims: int, first: int = 0) -> None:
    """v ← βv + (1−β)x² + ε (ε enters the state)."""
    ema_statistic_(pre, buffers, x, beta, eps, member_dims)
    tl.add_scalar_(buffers[0], eps)


def factored_statistic_(pre, buffers: list[TensorList], x: TensorList, beta: Scalar, eps: Scalar,
                        member_dims: int, first: int = 0) -> None:
    """R and C of :func:`update_factored_`."""
    update_factored_(buffers[0], buffers[1], x, beta, member_dims)


def last_buffer(pre, buffers: list[TensorList], eps: Scalar | None, member_dims: int) -> TensorList:
    """The statistic is the row's last buffer (v, or v̄ of ``max``)."""
    return buffers[-1]


def factored_read(pre, buffers: list[TensorList], eps: Scalar, member_dims: int) -> TensorList:
    """v̂ = R·C/max(mean(R), ε) (:func:`factored_estimate`)."""
    return factored_estimate(buffers[0], buffers[1], eps, member_dims)


# ---------------------------------------------------------------------------- eps_mode rows
# An eps_mode row's function (registry.PARTS["eps_mode"]): ``(pre, numerators, stat, bias, ctx)`` ->
# [(coefficient, numerator, denominator or None)], the term's numerator parts y divided by the root of
# the statistic v; bias is bc = 1 − β^t (1.0 without bias correction), d = ctx.feedback (Eve) or none.
# A denominator is new memory of this step (never a state buffer): the step may overwrite it.


def _eps(pre, ctx) -> Scalar:
    """ε, times the global floor scale where a global stage sets one (ctx.eps_scale)."""
    eps = ctx.genes[pre.eps]
    return eps if ctx.eps_scale is None else tl.mul(eps, ctx.eps_scale)


def _root(stat: TensorList, bias: Scalar, feedback: Scalar | None) -> TensorList:
    """d·√(v/bc) as new tensors."""
    den = list(torch._foreach_sqrt(stat))
    if not tl.is_one(bias):
        tl.divide_(den, tl.sqrt(bias))
    if feedback is not None:
        tl.scale_(den, feedback)
    return den


def outside_eps(pre, numerators, stat: TensorList, bias: Scalar, ctx) -> list:
    """y/(d·√(v/bc) + ε) (Adam)."""
    den = _root(stat, bias, ctx.feedback)
    tl.add_scalar_(den, _eps(pre, ctx))
    return [(c, num, den) for c, num in numerators]


def raw_eps(pre, numerators, stat: TensorList, bias: Scalar, ctx) -> list:
    """√bc·y/(d·√v + ε) (torch RAdam, rectified AdaBelief)."""
    den = _root(stat, 1.0, ctx.feedback)
    tl.add_scalar_(den, _eps(pre, ctx))
    coef = tl.sqrt(bias)
    return [(tl.mul(c, coef), num, den) for c, num in numerators]


def inside_eps(pre, numerators, stat: TensorList, bias: Scalar, ctx) -> list:
    """y/(d·√(v/bc + ε))."""
    den = tl.scaled(stat, 1.0 / bias) if not tl.is_one(bias) else tl.clone(stat)
    tl.add_scalar_(den, _eps(pre, ctx))
    torch._foreach_sqrt_(den)
    if ctx.feedback is not None:
        tl.scale_(den, ctx.feedback)
    return [(c, num, den) for c, num in numerators]


def clamp_eps(pre, numerators, stat: TensorList, bias: Scalar, ctx) -> list:
    """y/max(d·√(v/bc), ε) (ADOPT)."""
    den = _root(stat, bias, ctx.feedback)
    clamp_min_(den, _eps(pre, ctx))
    return [(c, num, den) for c, num in numerators]


def atan2_eps(pre, numerators, stat: TensorList, bias: Scalar, ctx) -> list:
    """a·atan2(y, b·d·√(v/bc)), no ε (Adam-atan2)."""
    (c0, first), rest = numerators[0], numerators[1:]
    y = tl.clone(first)
    tl.scale_(y, c0)
    for c, num in rest:
        tl.add_scaled_(y, num, c)
    genes = ctx.genes
    return [(genes[pre.a], atan2_normalized(y, stat, genes[pre.b], bias, ctx.feedback), None)]


def clamp_min_(xs: TensorList, low: Scalar) -> None:
    """x ← max(x, low) in place (``low`` a float, or a tensor that broadcasts per member)."""
    if tl.is_float(low):
        torch._foreach_clamp_min_(xs, float(low))
    else:
        torch._foreach_maximum_(xs, tl.factor_args(low, xs))


def clip_(xs: TensorList, c: Scalar) -> None:
    """x ← clamp(x, −c, c) elementwise in place (ADOPT's clip of the normalized gradient)."""
    if tl.is_float(c):
        torch._foreach_clamp_min_(xs, -float(c))
        torch._foreach_clamp_max_(xs, float(c))
    else:
        bounds = tl.factor_args(c, xs)
        torch._foreach_maximum_(xs, [-b for b in bounds])
        torch._foreach_minimum_(xs, bounds)


def atan2_normalized(y: TensorList, stat: TensorList, b: Scalar, bias: Scalar, feedback: Scalar | None
                     ) -> TensorList:
    """atan2(y, b·d·√(v/bc)) as new tensors (the caller scales by a)."""
    den = list(torch._foreach_sqrt(stat))
    scale = tl.mul(b, 1.0 / tl.sqrt(bias)) if not tl.is_one(bias) else b
    if feedback is not None:
        scale = tl.mul(scale, feedback)
    tl.scale_(den, scale)
    return [torch.atan2(a, d) for a, d in zip(y, den)]


def stale_beta(beta: Scalar | None, t: Step) -> Scalar | None:
    """β of a stale statistic's update: 0 at t = 1 (so v_0 = x_1²), else β."""
    if beta is None:
        return None
    if tl.is_float(t):
        return 0.0 if t <= 1 else beta
    return (t > 1).to(t.dtype) * beta


def after_first_step(t: Step) -> Scalar:
    """1 from t = 2 on, 0 at t = 1 (a tensor for a tensor t: no host sync)."""
    return float(t > 1) if tl.is_float(t) else (t > 1).to(t.dtype)


def rectification(beta: Scalar, t: Step) -> tuple[Scalar, Scalar]:
    """RAdam (Liu et al. 2020): factors (a, b) so the term is a·r_t·(y/den) + b·y.

    ρ∞ = 2/(1−β) − 1, ρ_t = ρ∞ − 2tβ^t/(1−β^t), r_t = √((ρ_t−4)(ρ_t−2)ρ∞ / ((ρ∞−4)(ρ∞−2)ρ_t));
    (a, b) = (r_t, 0) when ρ_t > 5, else (0, 1): plain momentum while the variance is unreliable.
    With a tensor β or t the choice is a ``torch.where`` (no host sync).
    """
    rho_inf = 2.0 / (1.0 - beta) - 1.0
    beta_t = tl.power(beta, t)
    rho_t = rho_inf - 2.0 * t * beta_t / (1.0 - beta_t)
    if tl.is_float(beta) and tl.is_float(t):
        if rho_t > 5.0:
            return ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5, 0.0
        return 0.0, 1.0
    ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
    active = rho_t > 5.0
    rect = torch.where(active, torch.sqrt(torch.clamp(ratio, min=0.0)), torch.zeros_like(ratio))
    return rect, (~active).to(rect.dtype)


def _member_view(s: Scalar, like: Tensor) -> Scalar:
    """A per-member ``[P]`` scalar shaped to broadcast against ``like``; floats and 0-d tensors as they are."""
    return tl.broadcast(s, like) if isinstance(s, Tensor) else s


def update_factored_(rows: TensorList, columns: TensorList, x: TensorList, beta: Scalar, member_dims: int) -> None:
    """Adafactor's factored second moment (Shazeer & Stern 2018; torch.optim.Adafactor), in place.

    A tensor of ≥ 2 dims per member, its last two dims n×m: R ← lerp(R, mean over m of x², 1−β) into
    R [..., n, 1] and C ← lerp(C, mean over n of x², 1−β) into C [..., 1, m]; leading dims (the member
    axis among them) index separate factorizations. A tensor of fewer dims: R is a full v ← lerp(v, x², 1−β).
    """
    for r, c, g in zip(rows, columns, x):
        w = (1.0 - _member_view(beta, r)).to(r.dtype) if isinstance(beta, Tensor) else 1.0 - beta
        square = g * g
        if g.ndim - member_dims >= 2:
            r.lerp_(square.mean(dim=-1, keepdim=True), w)
            c.lerp_(square.mean(dim=-2, keepdim=True), w)
        else:
            r.lerp_(square, w)


def factored_estimate(rows: TensorList, columns: TensorList, eps: Scalar, member_dims: int) -> TensorList:
    """v̂ = R·C/max(mean(R), ε) (the outer product, per leading index) for a factored tensor, a copy of v
    for the others: new tensors, shaped like the parameters."""
    out = []
    for r, c in zip(rows, columns):
        if r.ndim - member_dims < 2:  # a tensor of < 2 dims: the full v
            out.append(r.clone())
            continue
        scale = r.mean(dim=-2, keepdim=True)
        floor = _member_view(eps, scale)
        scale = scale.clamp(min=floor) if tl.is_float(floor) else torch.maximum(scale, floor.to(scale))
        out.append(torch.matmul(r, c).div_(scale))
    return out
