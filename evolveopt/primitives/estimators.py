"""Prodigy's global step-size estimate (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive
Parameter-Free Learner", ICML 2024, Algorithm 3 as in prodigyopt 1.1.2 with slice_p = 1).

One estimate d of the distance to the solution per model, from sums over every parameter of
every param group (k counts the estimator's steps, θ0 is each parameter's value at its first step):

    η̂ = d·η_t·bc,  bc = √(1 − β2^k)/(1 − β1^k) with bias correction, else 1
    r ← β3·r + (d/d0)·η̂·Σ⟨g, θ0 − θ⟩
    s ← β3·s + (d/d0)·η̂·g      (d/d0·d·g with safeguard_warmup)
    d̂ = c·r/Σ‖s‖₁;  d ← max(d, d̂) while d = d0;  d_max ← max(d_max, d̂);  d' = min(d_max, d·growth)

and the rest of the step reads d·g in place of g (so m ← β1·m + (1−β1)·d·g and v ← β2·v +
(1−β2)·d²·g² in Adam's terms), η̂ in place of η_t (the step and decoupled decay) and d'·ε in
place of every precondition floor ε. A step whose Σ‖s‖₁ is 0 (no gradient has been nonzero yet)
leaves r, d, d_max and k as they were and moves nothing, as prodigyopt returns early. A flow
whose η_t is the number 0 (a frozen param group) takes no part in the sums.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from evolveopt.genome.registry import PRODIGY_SLOTS
from evolveopt.primitives import tensorlist as tl

ESTIMATE_KEYS = ("d", "d_max", "numerator", "count")


def _inner(g: Tensor, start: Tensor, x: Tensor, member_dims: int) -> Tensor:
    """⟨g, θ0 − θ⟩ (per member when member_dims is 1) in the tensors' dtype, then float64 (a float64
    accumulation of float32 runs tens of times slower). A product and a sum in one new tensor, not
    ``torch.dot``: a member's stacked row then reduces as the same model's tensor alone (dot orders
    its sums apart)."""
    product = torch.sub(start, x).mul_(g)
    return product.flatten(member_dims).sum(-1).to(torch.float64) if member_dims else product.sum().to(torch.float64)


def _l1(x: Tensor, member_dims: int) -> Tensor:
    """‖x‖₁ (per member when member_dims is 1), reduced in x's dtype, then float64."""
    return x.abs().flatten(member_dims).sum(-1).to(torch.float64) if member_dims else x.abs().sum().to(torch.float64)


def _total(values: list[Tensor]) -> Tensor:
    """Σ of per-tensor values (0-d, or ``[P]``) in list order: a running sum gives a member the bits
    the same model alone gets (a reduction over the stacked axis would order its sums differently)."""
    return torch.cumsum(torch.stack(values), dim=0)[-1]


def _f64(value, like: Tensor) -> Tensor:
    """A gene (float, 0-d or ``[P]`` tensor) as a float64 tensor on ``like``'s device."""
    return torch.as_tensor(value, dtype=torch.float64, device=like.device)


def init_estimate(d0, like: Tensor) -> dict[str, Tensor]:
    """d = d_max = d0, r = 0, k = 0, shaped like ``like`` (0-d, or ``[P]``), in float64."""
    d = torch.ones_like(like, dtype=torch.float64) * _f64(d0, like)
    zero = torch.zeros_like(d)
    return {"d": d, "d_max": d.clone(), "numerator": zero, "count": zero.clone()}


def bias_factor(beta1, beta2, k: Tensor) -> Tensor:
    """bc = √(1 − β2^k)/(1 − β1^k), each factor only where its rate is given."""
    bc = torch.ones_like(k)
    if beta1 is not None:
        bc = bc / (1.0 - torch.pow(_f64(beta1, k), k))
    if beta2 is not None:
        bc = bc * torch.sqrt(1.0 - torch.pow(_f64(beta2, k), k))
    return bc


def prodigy_estimate(value, flows, ctxs, store: dict[str, Tensor]) -> None:
    """Global-stage function (registry.py): advance Prodigy's estimate over ``flows`` (every tensor
    list of one step) and set what the rest of the step reads: ``flow.grads`` ← d·g, ``ctx.lr`` ← η̂
    and ``ctx.eps_scale`` ← d'.

    ``store`` keeps d, d_max, r and k, replaced by new tensors each step (0-d, or ``[P]`` for a
    stacked population). On the Python-int path (one model, host step counts) the factors that
    scale whole tensors are read as floats: syncs per step, as prodigyopt's ``.item()`` calls."""
    ctx0 = ctxs[0]
    genes, member_dims = ctx0.genes, ctx0.member_dims
    host = member_dims == 0 and not isinstance(ctx0.t, Tensor) and not torch.compiler.is_compiling()
    first = flows[0].params[0]
    if not store:
        store.update(init_estimate(genes[value.d0], first.new_zeros(first.shape[:member_dims], dtype=torch.float64)))
    d, d_max, r, k = (store[key] for key in ESTIMATE_KEYS)
    d0, beta = _f64(genes[value.d0], d), _f64(genes[value.beta], d)
    k_next = k + 1.0
    bc = bias_factor(genes[value.bias_beta1] if value.bias_beta1 else None,
                     genes[value.bias_beta2] if value.bias_beta2 else None, k_next)
    as_factor = (lambda x: x.item()) if host else (lambda x: x)
    beta_factor = genes[value.beta] if host else beta
    # Flows of one η_t (every flow, but for frozen groups or chunks at other step counts) share their
    # factors, computed (and on the host path read) once: dlr = η̂, weight = (d/d0)·η̂, the s input's factor.
    factors: dict = {}
    inner: dict = {}
    norms: list[Tensor] = []
    keys = []
    for flow, ctx in zip(flows, ctxs):
        key = ("value", ctx.lr) if tl.is_float(ctx.lr) else ("tensor", id(ctx.lr))
        keys.append(key)
        if key not in factors:
            dlr = d * _f64(ctx.lr, d) * bc
            factors[key] = (dlr, d / d0 * dlr, as_factor(d / d0 * (d if value.safeguard_warmup else dlr)))
        if tl.is_zero(ctx.lr):
            continue
        s, x0 = flow.state[PRODIGY_SLOTS[0]], flow.state[PRODIGY_SLOTS[1]]
        inner.setdefault(key, []).extend(_inner(g, start, x, member_dims)
                                         for g, x, start in zip(flow.grads, flow.params, x0))
        tl.scale_(s, beta_factor)
        tl.add_scaled_(s, flow.grads, factors[key][2])
        norms += [_l1(buf, member_dims) for buf in s]
    numerator = r * beta
    for key, products in inner.items():
        numerator = numerator + factors[key][1] * _total(products)
    denominator = _total(norms) if norms else torch.zeros_like(d)
    moved = denominator > 0  # prodigyopt returns before stepping while every s is 0
    d_hat = _f64(genes[value.coef], d) * numerator / torch.where(moved, denominator, torch.ones_like(denominator))
    new_max = torch.maximum(d_max, d_hat)
    growth = math.inf if value.growth is None else genes[value.growth]
    new_d = torch.minimum(new_max, torch.where(d == d0, torch.maximum(d, d_hat), d) * _f64(growth, d))
    store["d"] = torch.where(moved, new_d, d)
    store["d_max"] = torch.where(moved, new_max, d_max)
    store["numerator"] = torch.where(moved, numerator, r)
    store["count"] = torch.where(moved, k_next, k)
    scale, eps_scale = as_factor(d), as_factor(store["d"])
    step_sizes = {key: as_factor(torch.where(moved, dlr, torch.zeros_like(dlr))) for key, (dlr, *_) in factors.items()}
    for flow, ctx, key in zip(flows, ctxs, keys):
        flow.grads = tl.scaled(flow.grads, scale)
        ctx.lr = step_sizes[key]
        ctx.eps_scale = eps_scale
