"""Learning-rate schedules: η_t = lr · s(t), t = 1, 2, ...; T = total_steps, W = warmup·T.

    constant       s = 1
    linear_warmup  s = min(1, t/W)
    cosine         s = ½(1 + cos(π·min(t−1, T)/T))
    linear_decay   s = max(0, 1 − (t−1)/T)
    exponential    s = γ^(t−1)
    warmup_cosine  s = min(1, t/W) · ½(1 + cos(π·min(t−1, T)/T))   (the GA-paper schedule)

Gene schedules (``gene_schedules``, schema.py GeneSchedule) vary other genes with t the same
way, on floats, ``[P]`` gene tensors or a tensor t: :func:`scheduled_gene`.

A warmup of 0 means no warmup. Warmup is a fraction of the horizon so a schedule found at one
budget carries over to another. ``t`` is a Python int or, in the capturable/compiled path, a 0-d
tensor (then every factor is a tensor computed without a host sync).
"""

from __future__ import annotations

import math

import torch

from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Scalar, Step


def warmup_factor(t: Step, warmup: Scalar, total_steps: int) -> Scalar:
    span = warmup * total_steps
    if tl.is_float(span):
        if span <= 0:
            return 1.0
        return min(1.0, t / span) if tl.is_float(t) else torch.clamp(t / span, max=1.0)
    return torch.where(span > 0, torch.clamp(t / torch.clamp(span, min=1e-12), max=1.0), torch.ones_like(span))


def cosine_factor(t: Step, total_steps: int) -> Scalar:
    if tl.is_float(t):
        return 0.5 * (1.0 + math.cos(math.pi * min(t - 1, total_steps) / total_steps))
    return 0.5 * (1.0 + torch.cos(math.pi * torch.clamp(t - 1, max=total_steps) / total_steps))


def linear_decay_factor(t: Step, total_steps: int) -> Scalar:
    if tl.is_float(t):
        return max(0.0, 1.0 - (t - 1) / total_steps)
    return torch.clamp(1.0 - (t - 1) / total_steps, min=0.0)


def schedule_factor(kind: str, t: Step, total_steps: int | None, warmup: Scalar | None = None,
                    gamma: Scalar | None = None) -> Scalar:
    """s(t) for schedule ``kind``; horizon schedules need ``total_steps``."""
    if kind == "constant":
        return 1.0
    if kind == "exponential":
        return tl.power(gamma, t - 1)
    assert total_steps is not None, f"schedule '{kind}' needs total_steps"
    if kind == "linear_warmup":
        return warmup_factor(t, warmup, total_steps)
    if kind == "cosine":
        return cosine_factor(t, total_steps)
    if kind == "linear_decay":
        return linear_decay_factor(t, total_steps)
    if kind == "warmup_cosine":
        return tl.mul(warmup_factor(t, warmup, total_steps), cosine_factor(t, total_steps))
    raise ValueError(f"unknown schedule {kind!r}")


def scheduled_gene(kind: str, value: Scalar, t: Step, horizon: int | None = None, start: Scalar | None = None,
                   power: float | None = None, offset: int = 0, rate: bool = False) -> Scalar:
    """A gene's value at step t (schema.py GeneSchedule has the formulas); ``rate``: the gene is a
    rate, so ``power`` scales 1 − β."""
    if kind == "linear_warmup":
        if tl.is_float(t):
            return tl.mul(value, min(1.0, max(t - offset, 0) / horizon))
        return tl.mul(value, torch.clamp(torch.clamp(t - offset, min=0.0) / horizon, max=1.0))
    if kind == "power":
        s = max(t - offset, 0) ** power if tl.is_float(t) else torch.clamp(t - offset, min=0.0) ** power
        return 1.0 - tl.mul(1.0 - value, s) if rate else tl.mul(value, s)
    if kind == "halflife_warmup":
        return _halflife(value, start, min(1.0, t / horizon) if tl.is_float(t) else torch.clamp(t / horizon, max=1.0))
    raise ValueError(f"unknown gene schedule {kind!r}")


def _halflife(beta: Scalar, start: Scalar, s: Scalar) -> Scalar:
    """min(exp(ln β_s·ln β/((1 − s)·ln β + s·ln β_s)), β): 1/ln β_t interpolates linearly in s
    (pytorch-optimizer 4.1.0 AdEMAMix.schedule_beta3, with s clamped to 1 past the horizon)."""
    if all(tl.is_float(x) for x in (beta, start, s)):
        log_beta, log_start = math.log(max(beta, _TINY)), math.log(max(start, _TINY))
        return min(math.exp(log_start * log_beta / ((1.0 - s) * log_beta + s * log_start)), beta)
    like = next(x for x in (beta, start, s) if isinstance(x, torch.Tensor))
    beta_t, start_t, s_t = (torch.as_tensor(x, dtype=like.dtype, device=like.device) for x in (beta, start, s))
    tiny = torch.finfo(like.dtype).tiny
    log_beta, log_start = torch.log(torch.clamp(beta_t, min=tiny)), torch.log(torch.clamp(start_t, min=tiny))
    return torch.minimum(torch.exp(log_start * log_beta / ((1.0 - s_t) * log_beta + s_t * log_start)), beta_t)


_TINY = 1e-300  # a rate of 0 as the start of a half-life warmup: its log stays finite (tensors: finfo.tiny)
