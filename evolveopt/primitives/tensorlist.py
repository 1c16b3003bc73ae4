"""Arithmetic over lists of tensors with scalars that may differ per population member.

Every primitive works on a ``TensorList`` (the parameters of one group, or of one stacked
population) and on ``Scalar`` hyperparameters:

* a Python float: one value for every tensor (the ``torch.optim`` path), dispatched to the
  ``torch._foreach_*`` scalar overloads;
* a tensor of shape ``[P]``: one value per population member, where every tensor in the list
  has the member axis first (``[P, ...]``); it is viewed as ``[P, 1, ..., 1]`` to broadcast;
* a 0-d tensor: one value, kept on the device (no host sync).

A ``Factor`` is a Scalar or a list of Scalars, one per tensor (per-tensor quantities such as a
trust ratio). A ``Step`` count t is a Python int, or a 0-d float64 tensor where the step must not
read the host (``capturable=True``, ``torch.compile``): functions of t then return tensors.
With ``member_dims = 1`` reductions run over every axis but the first.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

TensorList = list[Tensor]
Scalar = Union[float, Tensor]
Factor = Union[Scalar, Sequence[Scalar]]
Step = Union[int, Tensor]


def broadcast(s: Scalar, like: Tensor) -> Scalar:
    """``s`` shaped to broadcast against ``like`` (a ``[P]`` tensor becomes ``[P, 1, ..., 1]``)."""
    if isinstance(s, Tensor) and s.ndim == 1 and like.ndim > 1:
        return s.view(s.shape[0], *([1] * (like.ndim - 1)))
    return s


def factor_args(f: Factor, xs: TensorList) -> float | list:
    """A foreach scalar argument: a float, a list of floats, or a list of broadcastable tensors."""
    if isinstance(f, (int, float)):
        return float(f)
    items = [f] * len(xs) if isinstance(f, Tensor) else list(f)
    if all(isinstance(s, (int, float)) for s in items):
        return [float(s) for s in items]
    return [broadcast(_as_tensor_like(s, x), x) for s, x in zip(items, xs)]


def _as_tensor_like(s: Scalar, x: Tensor) -> Tensor:
    if isinstance(s, Tensor):
        return s.to(x.dtype) if s.dtype != x.dtype else s
    return torch.tensor(s, dtype=x.dtype, device=x.device)


def is_float(s: object) -> bool:
    return isinstance(s, (int, float))


def is_zero(f: Factor) -> bool:
    """True only when ``f`` is the Python number 0 (tensors are never skipped: no host sync)."""
    return is_float(f) and f == 0.0


def is_one(f: Factor) -> bool:
    return is_float(f) and f == 1.0


# ----------------------------------------------------------------------------- scalar math


def sqrt(s: Scalar) -> Scalar:
    return math.sqrt(s) if is_float(s) else torch.sqrt(s)


def power(base: Scalar, t: Step) -> Scalar:
    """base^t; with a tensor t, exp(t·ln base): inductor computes a reused exp once per kernel
    instead of a double ``pow`` per vectorized iteration (base ≥ 0)."""
    if is_float(t):
        return base**t
    log_base = torch.log(base) if isinstance(base, Tensor) else (math.log(base) if base > 0 else -math.inf)
    return torch.exp(t * log_base)


def mul(f: Factor, g: Factor) -> Factor:
    """Product of two factors (either may be per-tensor)."""
    if is_one(f):
        return g
    if is_one(g):
        return f
    if isinstance(f, (list, tuple)) or isinstance(g, (list, tuple)):
        n = len(f) if isinstance(f, (list, tuple)) else len(g)  # type: ignore[arg-type]
        fs = f if isinstance(f, (list, tuple)) else [f] * n
        gs = g if isinstance(g, (list, tuple)) else [g] * n
        return [a * b for a, b in zip(fs, gs)]
    return f * g  # type: ignore[operator]


# ----------------------------------------------------------------------------- list ops


def clone(xs: TensorList) -> TensorList:
    return [x.clone() for x in xs]


def scaled(xs: TensorList, f: Factor) -> TensorList:
    """New list f·x."""
    if is_one(f):
        return list(xs)
    return list(torch._foreach_mul(xs, factor_args(f, xs)))


def scale_(xs: TensorList, f: Factor) -> None:
    """x ← f·x in place."""
    if not is_one(f):
        torch._foreach_mul_(xs, factor_args(f, xs))


def add_scaled_(xs: TensorList, ys: TensorList, f: Factor) -> None:
    """x ← x + f·y in place (one pass: a per-member f broadcasts inside addcmul)."""
    if is_zero(f):
        return
    if is_float(f):
        torch._foreach_add_(xs, ys, alpha=float(f))
    elif isinstance(f, (list, tuple)) and all(is_float(a) for a in f):  # one float per tensor
        for x, y, a in zip(xs, ys, f):
            x.add_(y, alpha=float(a))
    else:
        torch._foreach_addcmul_(xs, ys, factor_args(f, xs))


def added(xs: TensorList, ys: TensorList, f: Factor = 1.0) -> TensorList:
    """New list x + f·y."""
    if is_float(f):
        return list(torch._foreach_add(xs, ys, alpha=float(f)))
    return list(torch._foreach_add(xs, scaled(ys, f)))


def lerp_(xs: TensorList, ys: TensorList, w: Scalar) -> None:
    """x ← x + w·(y − x) = (1−w)·x + w·y in place."""
    torch._foreach_lerp_(xs, ys, factor_args(w, xs))


def addcmul_(xs: TensorList, ys: TensorList, zs: TensorList, f: Scalar) -> None:
    """x ← x + f·y⊙z in place."""
    if is_float(f):
        torch._foreach_addcmul_(xs, ys, zs, value=float(f))
    else:
        torch._foreach_addcmul_(xs, scaled(ys, f), zs)


def addcdiv_(xs: TensorList, ys: TensorList, zs: TensorList, f: Factor) -> None:
    """x ← x + f·y/z in place."""
    if is_zero(f):
        return
    if is_float(f):
        torch._foreach_addcdiv_(xs, ys, zs, value=float(f))
    else:
        torch._foreach_addcdiv_(xs, scaled(ys, f), zs)


def add_scalar_(xs: TensorList, s: Scalar) -> None:
    """x ← x + s in place."""
    if is_float(s):
        if s != 0.0:
            torch._foreach_add_(xs, float(s))
    else:
        torch._foreach_add_(xs, factor_args(s, xs))


def divide_(xs: TensorList, s: Factor) -> None:
    """x ← x / s in place."""
    if not is_one(s):
        torch._foreach_div_(xs, factor_args(s, xs))


def divided(xs: TensorList, ys: TensorList) -> TensorList:
    return list(torch._foreach_div(xs, ys))


# A CPU tensor above this many elements is divided into its scratch denominator's memory: a fresh
# allocation that large costs more in page faults than the division itself (glibc returns it each step).
IN_PLACE_MIN_NUMEL = 65_536


def divided_over(xs: TensorList, ys: TensorList) -> TensorList:
    """x/y, written over ``ys`` (scratch the caller owns) where they are large CPU tensors of x's shape,
    as new tensors otherwise; the same values as :func:`divided` either way."""
    if all(not y.is_cuda and y.shape == x.shape and y.numel() > IN_PLACE_MIN_NUMEL for x, y in zip(xs, ys)):
        for x, y in zip(xs, ys):
            torch.div(x, y, out=y)
        return list(ys)
    return divided(xs, ys)


def member_norms(xs: TensorList, member_dims: int) -> list[Tensor]:
    """‖x‖₂ of each tensor, per member: 0-d tensors (member_dims 0) or ``[P]`` tensors (1)."""
    if member_dims == 0:
        return list(torch._foreach_norm(xs))
    return [torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1) for x in xs]


def member_numels(xs: TensorList, member_dims: int) -> list[int]:
    return [x[0].numel() if member_dims else x.numel() for x in xs]


def global_norm(xs: TensorList, member_dims: int) -> Tensor:
    """‖(x_1, ..., x_n)‖₂ over every tensor: a 0-d tensor, or ``[P]`` with member_dims 1. The squares
    of the tensors' norms are summed in order (a running sum), so a stacked member gets the bits of
    the same model alone: a reduction over the stacked axis orders its sums differently."""
    norms = member_norms(xs, member_dims)
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    squares = torch.stack([n.to(dtype) for n in norms]) ** 2
    return torch.sqrt(torch.cumsum(squares, dim=0)[-1])
