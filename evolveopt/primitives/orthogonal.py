"""Orthogonalized updates (Muon: Jordan et al. 2024; Moonlight: Liu et al., arXiv 2502.16982).

Each tensor is viewed as a matrix M = [d0, prod(rest)] (after the member axis of a stacked
population) and replaced by an approximation of its polar factor U Vᵀ (M = U S Vᵀ), computed
by a few quintic Newton–Schulz iterations; the update is then rescaled by a shape factor.
With ``member_dims = 1`` every tensor is ``[P, d0, ...]`` and one batched matmul serves all P
members. Coefficients and step counts are structural (shared by the whole population).
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import Tensor

from evolveopt.errors import GenomeError, OptimizerUsageError
from evolveopt.genome.registry import NS_DTYPES, NS_SCALES
from evolveopt.primitives.tensorlist import TensorList

Triple = tuple[float, float, float]
Coefficients = Union[str, Triple, Sequence[Triple]]

# (a, b, c) of X ← aX + (bA + cA²)X per iteration; a schedule shorter than ``steps`` repeats
# its last triple. "original": Jordan 2024 (max slope at 0); "quintic": modded-nanogpt's tuned
# 5-step schedule; "polar_express" (safety 1e-2) and "polar_express_safer" (2e-2): Amsel et al.,
# arXiv 2505.16932. The numbers are the pytorch-optimizer 4.1.0 presets (tests compare them); the
# names are registry.NS_COEFFICIENTS, the genome layer's torch-free copy (tests check they agree).
COEFFICIENTS: dict[str, tuple[Triple, ...]] = {
    "original": ((3.4445, -4.7750, 2.0315),),
    "quintic": (
        (4.0848, -6.8946, 2.9270),
        (3.9505, -6.3029, 2.6377),
        (3.7418, -5.5913, 2.3037),
        (2.8769, -3.1427, 1.2046),
        (2.8366, -3.0525, 1.2012),
    ),
    "polar_express": (
        (8.237312490495555, -23.157747414558198, 16.680568411445915),
        (4.082441999064835, -2.893047735332586, 0.5252849256975648),
        (3.9263479922546582, -2.8547468034765298, 0.5318022422894988),
        (3.2982187133085143, -2.424541981026706, 0.48632008358844075),
        (2.2970369434552573, -1.63662558125903, 0.4002628455953627),
        (1.8763805351440397, -1.2347896577722228, 0.35891887501668385),
        (1.8564423485617974, -1.2132449880935525, 0.3568003487825883),
        (1.8749994008682747, -1.2499988017229169, 0.3749994008546422),
    ),
    "polar_express_safer": (
        (8.156554524902461, -22.48329292557795, 15.878769915207462),
        (4.0429299351667245, -2.808917465908704, 0.5000178451051299),
        (3.8916678022926563, -2.7724841532176825, 0.5060648178503389),
        (3.285753657755658, -2.3681294933425394, 0.46449024233003117),
        (2.3005307116270983, -1.6111665557258408, 0.3833374427545273),
        (1.8631210546382593, -1.2042160621002727, 0.3421879560523383),
        (1.8382572152247512, -1.1779263289537742, 0.3396513038637379),
        (1.8749999923301852, -1.2499999836060613, 0.374999991275876),
    ),
}
COMPUTE_DTYPES = NS_DTYPES  # the one list of names, in the registry (torch-free)
SHAPE_SCALES = NS_SCALES


def _names(allowed: Sequence[str]) -> str:
    return ", ".join(allowed)


def coefficient_schedule(coefficients: Coefficients, steps: int) -> list[Triple]:
    """The (a, b, c) of each of ``steps`` iterations: a preset name, one triple, or a list of them."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise GenomeError(f"orthogonalize: steps must be an integer >= 1, got {steps!r}")
    if isinstance(coefficients, str):
        if coefficients not in COEFFICIENTS:
            raise GenomeError(f"orthogonalize: unknown coefficients {coefficients!r} "
                              f"(allowed: {_names(list(COEFFICIENTS))}, or (a, b, c) triples)")
        schedule: Sequence = COEFFICIENTS[coefficients]
    elif len(coefficients) == 3 and all(isinstance(v, (int, float)) for v in coefficients):
        schedule = [coefficients]
    else:
        schedule = list(coefficients)
    triples = []
    for triple in schedule:
        if isinstance(triple, str) or len(triple) != 3 or not all(isinstance(v, (int, float)) for v in triple):
            raise GenomeError(f"orthogonalize: coefficients must be a preset name or (a, b, c) triples, "
                              f"got {coefficients!r}")
        triples.append(tuple(float(v) for v in triple))
    if not triples:
        raise GenomeError("orthogonalize: coefficients must not be an empty list")
    return [triples[min(i, len(triples) - 1)] for i in range(steps)]


def matrix_shape(shape: Sequence[int], member_dims: int, index: int | None = None) -> tuple[int, int]:
    """(d0, prod(rest)) of one member's tensor: the matrix Newton–Schulz and the scale see."""
    dims = tuple(shape)[member_dims:]
    if len(dims) < 2:
        where = "a tensor" if index is None else f"tensor {index}"
        raise OptimizerUsageError(
            f"orthogonalize: {where} has shape {list(dims)} per member; it needs at least 2 dims "
            f"(route 0-/1-D parameters to another rule)")
    return dims[0], math.prod(dims[1:])


def _compute_dtype(name: str, x: Tensor) -> torch.dtype:
    if name == "bfloat16":
        return torch.bfloat16
    if name == "param":
        return x.dtype
    raise GenomeError(f"orthogonalize: unknown dtype {name!r} (allowed: {_names(COMPUTE_DTYPES)})")


def newton_schulz(xs: TensorList, steps: int, coefficients: Coefficients, compute_dtype: str,
                  member_dims: int, eps: float = 1e-7) -> TensorList:
    """O ≈ U Vᵀ of each tensor's matrix view: X₀ = M/max(‖M‖_F, ε) (transposed when d0 > d1),
    then ``steps`` times A = X Xᵀ, X ← aX + (bA + cA²)X, computed in ``compute_dtype``.

    The op order is torch 2.13's ``torch.optim.Muon`` (``addmm(A, A, A, beta=b, alpha=c)``,
    ``addmm(X, B, X, beta=a)``; ``baddbmm`` for a stacked population), so bf16 results match it
    bit for bit; a stack matches per member where torch's CPU kernels pick the same blocking for
    ``bmm`` as for ``mm`` (not for every shape, e.g. [64, 1024]: then within bf16 rounding).
    Returns new tensors of the inputs' shapes and dtypes; the inputs are not changed.
    """
    schedule = coefficient_schedule(coefficients, steps)
    out = []
    for i, x in enumerate(xs):
        d0, d1 = matrix_shape(x.shape, member_dims, i)
        dtype = _compute_dtype(compute_dtype, x)
        m = x.reshape(*x.shape[:member_dims], d0, d1).to(dtype)
        transpose = d0 > d1
        if transpose:
            m = m.mT
        if member_dims:
            norm = torch.linalg.vector_norm(m, dim=(-2, -1), keepdim=True)
            gram, addmm = torch.bmm, torch.baddbmm
        else:
            norm = m.norm()
            gram, addmm = torch.mm, torch.addmm
        m = torch.div(m, norm.clamp(min=eps))
        for a, b, c in schedule:
            g = gram(m, m.mT)
            poly = addmm(g, g, g, beta=b, alpha=c)
            m = addmm(m, poly, m, beta=a)
        if transpose:
            m = m.mT
        out.append(m.reshape(x.shape).to(x.dtype))
    return out


def shape_scale(shape: Sequence[int], kind: str, member_dims: int) -> float:
    """The update's shape factor for matrix view [d0, d1] (torch 2.13 ``Muon._adjust_lr``):
    "original" √max(1, d0/d1) (Jordan); "match_rms_adamw" 0.2·√max(d0, d1) (Moonlight); "none" 1.

    For a tensor of more than 2 dims, d1 = prod(rest) (the matrix Newton–Schulz sees).
    """
    d0, d1 = matrix_shape(shape, member_dims)
    if kind == "original":
        return math.sqrt(max(1, d0 / d1))
    if kind == "match_rms_adamw":
        return 0.2 * math.sqrt(max(d0, d1))
    if kind == "none":
        return 1.0
    raise GenomeError(f"shape_scale: unknown kind {kind!r} (allowed: {_names(SHAPE_SCALES)})")


def shape_scales(xs: TensorList, kind: str, member_dims: int) -> list[float]:
    """One :func:`shape_scale` per tensor (a per-tensor Factor for ``tensorlist``)."""
    return [shape_scale(x.shape, kind, member_dims) for x in xs]


def orthogonalize_stage(value, flow, ctx) -> None:
    """Stage function (registry.py): ``flow.direction`` ← its Newton–Schulz polar factor, and the shape
    factor s of each tensor goes to ``flow.step_scale`` (θ ← θ − η_t·s·u, torch.optim.Muon's adjusted lr:
    the product η_t·s is formed before it meets u, as there)."""
    flow.direction = newton_schulz(flow.direction, value.steps, value.coefficients, value.dtype, ctx.member_dims)
    scales = shape_scales(flow.direction, value.scale, ctx.member_dims)
    flow.step_scale = None if all(s == 1.0 for s in scales) else scales
