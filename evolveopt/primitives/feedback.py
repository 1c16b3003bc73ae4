"""Eve's loss feedback (Koushik & Hayashi, arXiv 1611.01505, Algorithm 1).

One global factor d_t per model, from the relative change of a clipped, smoothed loss f̂:

    t = 1:  f̂_1 = f_1, d_1 = 1
    t > 1:  (lo, hi) = (1 + k, 1 + K) if f_t ≥ f̂_{t−1} else (1/(1 + K), 1/(1 + k))
            c = clip(f_t/f̂_{t−1}, lo, hi);  f̂_t = c·f̂_{t−1}
            d_t = β d_{t−1} + (1 − β)·|f̂_t − f̂_{t−1}| / min(f̂_t, f̂_{t−1})

The step divides by d_t inside the root: m̂/(d_t·√v̂ + ε). The loss is assumed positive.
"""

from __future__ import annotations

import torch
from torch import Tensor

from evolveopt.primitives.tensorlist import Scalar


def init_feedback(loss: Tensor) -> dict[str, Tensor]:
    """State after the first step: f̂ = f, d = 1 (float64, on the loss's device and shape)."""
    f = loss.detach().to(torch.float64)
    return {"smoothed_loss": f.clone(), "factor": torch.ones_like(f)}


def update_feedback_(state: dict[str, Tensor], loss: Tensor, beta: Scalar, low: Scalar, high: Scalar) -> Tensor:
    """Advance f̂ and d (t > 1), as new tensors in ``state``, and return d_t.

    New tensors, not in-place updates: torch.compile (torch 2.13, aot_autograd) silently drops
    in-place updates of 0-d float64 CPU inputs, which these are."""
    f = loss.detach().to(torch.float64)
    f_prev = state["smoothed_loss"]
    rising = f >= f_prev
    lo = torch.where(rising, 1.0 + torch.as_tensor(low, dtype=f.dtype), 1.0 / (1.0 + torch.as_tensor(high, dtype=f.dtype)))
    hi = torch.where(rising, 1.0 + torch.as_tensor(high, dtype=f.dtype), 1.0 / (1.0 + torch.as_tensor(low, dtype=f.dtype)))
    ratio = torch.minimum(torch.maximum(f / f_prev, lo), hi)
    f_new = ratio * f_prev
    change = torch.abs(f_new - f_prev) / torch.minimum(f_new, f_prev)
    state["factor"] = beta * state["factor"] + (1.0 - beta) * change
    state["smoothed_loss"] = f_new
    return state["factor"]
