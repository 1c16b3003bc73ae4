"""Learning-rate schedules: η_t = lr · s(t), t = 1, 2, ...; T = total_steps, W = warmup·T.

    constant       s = 1
    linear_warmup  s = min(1, t/W)
    cosine         s = ½(1 + cos(π·min(t−1, T)/T))
    linear_decay   s = max(0, 1 − (t−1)/T)
    exponential    s = γ^(t−1)
    warmup_cosine  s = min(1, t/W) · ½(1 + cos(π·min(t−1, T)/T))   (the GA-paper schedule)

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
