"""Learning-rate schedules: η_t = lr · s(t), t = 1, 2, ...; T = total_steps, W = warmup·T.

    constant       s = 1
    linear_warmup  s = min(1, t/W)
    cosine         s = ½(1 + cos(π·min(t−1, T)/T))
    linear_decay   s = max(0, 1 − (t−1)/T)
    exponential    s = γ^(t−1)
    warmup_cosine  s = min(1, t/W) · ½(1 + cos(π·min(t−1, T)/T))   (the GA-paper schedule)

A warmup of 0 means no warmup. Warmup is a fraction of the horizon so a schedule found at one
budget carries over to another.
"""

from __future__ import annotations

import math

import torch

from evolveopt.primitives import tensorlist as tl
from evolveopt.primitives.tensorlist import Scalar


def warmup_factor(t: int, warmup: Scalar, total_steps: int) -> Scalar:
    span = warmup * total_steps
    if tl.is_float(span):
        return 1.0 if span <= 0 else min(1.0, t / span)
    return torch.where(span > 0, torch.clamp(t / torch.clamp(span, min=1e-12), max=1.0), torch.ones_like(span))


def cosine_factor(t: int, total_steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(t - 1, total_steps) / total_steps))


def schedule_factor(kind: str, t: int, total_steps: int | None, warmup: Scalar | None = None,
                    gamma: Scalar | None = None) -> Scalar:
    """s(t) for schedule ``kind``; horizon schedules need ``total_steps``."""
    if kind == "constant":
        return 1.0
    if kind == "exponential":
        return gamma ** (t - 1)
    assert total_steps is not None, f"schedule '{kind}' needs total_steps"
    if kind == "linear_warmup":
        return warmup_factor(t, warmup, total_steps)
    if kind == "cosine":
        return cosine_factor(t, total_steps)
    if kind == "linear_decay":
        return max(0.0, 1.0 - (t - 1) / total_steps)
    if kind == "warmup_cosine":
        return tl.mul(warmup_factor(t, warmup, total_steps), cosine_factor(t, total_steps))
    raise ValueError(f"unknown schedule {kind!r}")
