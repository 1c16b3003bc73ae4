"""Newton–Schulz orthogonalization and Muon's shape scale against their references.

Oracles: pytorch-optimizer 4.1.0's ``zero_power_via_newton_schulz_5`` (float64, every preset),
torch 2.13's ``torch.optim.Muon`` (its bf16 Newton–Schulz, its lr adjustment, and whole steps).
The shapes have d0 < d1 and d0 > d1 (the transposed path) and include conv-shaped 4-D tensors.
"""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_optimizer.optimizer.muon.base import get_adjusted_lr
from pytorch_optimizer.optimizer.utils.matrix import NS_COEFFICIENTS, zero_power_via_newton_schulz_5

from evolveopt.errors import GenomeError, OptimizerUsageError
from evolveopt.genome import registry
from evolveopt.primitives.orthogonal import COEFFICIENTS, newton_schulz, shape_scale, shape_scales

torch_muon = pytest.importorskip("torch.optim._muon", reason="this torch build has no torch.optim.Muon")
_torch_ns = getattr(torch_muon, "_zeropower_via_newtonschulz", None)
needs_torch_ns = pytest.mark.skipif(_torch_ns is None, reason="torch.optim._muon has no _zeropower_via_newtonschulz")

# 2-D both ways, square, conv-shaped [out, in, kh, kw] both ways (27 and 8 columns)
SHAPES = [(24, 40), (40, 24), (7, 7), (16, 3, 3, 3), (32, 2, 2, 2)]
ORIGINAL = (3.4445, -4.7750, 2.0315)


def _randn(shape, dtype=torch.float64, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def test_presets_are_pytorch_optimizers():
    assert set(COEFFICIENTS) == set(NS_COEFFICIENTS)
    assert tuple(COEFFICIENTS) == registry.NS_COEFFICIENTS  # the genome layer's torch-free copy of the names
    for name, triples in COEFFICIENTS.items():
        assert list(triples) == [tuple(t) for t in NS_COEFFICIENTS[name]], name


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("preset", sorted(COEFFICIENTS))
def test_float64_matches_pytorch_optimizer(shape, preset):
    x = _randn(shape)
    ref = zero_power_via_newton_schulz_5(x.reshape(shape[0], -1), num_steps=5, weights=preset, dtype=torch.float64)
    (ours,) = newton_schulz([x], 5, preset, "param", member_dims=0)
    assert ours.shape == x.shape and ours.dtype == torch.float64
    assert _rel(ours, ref.reshape(shape)) < 1e-12


@pytest.mark.parametrize("coefficients", ["polar_express", [(3.0, -3.2, 1.2), ORIGINAL], ORIGINAL],
                         ids=["preset", "triples", "triple"])
@pytest.mark.parametrize("steps", [2, 10])
def test_schedule_shorter_or_longer_than_steps(coefficients, steps):
    """A schedule is cut to ``steps`` or repeats its last triple, as pytorch-optimizer does."""
    x = _randn((12, 20), seed=3)
    ref = zero_power_via_newton_schulz_5(x, num_steps=steps, weights=coefficients, dtype=torch.float64)
    (ours,) = newton_schulz([x], steps, coefficients, "param", member_dims=0)
    assert _rel(ours, ref) < 1e-12


@needs_torch_ns
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bfloat16_matches_torch_muon(shape, dtype):
    """bf16 Newton–Schulz in torch 2.13's op order equals torch.optim.Muon's own bit for bit."""
    x = _randn(shape, dtype, seed=1)
    ref = _torch_ns(x.reshape(shape[0], -1), ORIGINAL, 5, 1e-7).reshape(shape)
    (ours,) = newton_schulz([x], 5, "original", "bfloat16", member_dims=0)
    assert ref.dtype == torch.bfloat16 and ours.dtype == dtype
    torch.testing.assert_close(ours, ref.to(dtype), rtol=0, atol=0)


@needs_torch_ns
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_stacked_bfloat16_matches_torch_muon_per_member(shape):
    """The batched (baddbmm) path gives each member torch.optim.Muon's own result."""
    xs = _randn((3, *shape), torch.float32, seed=2)
    (ours,) = newton_schulz([xs], 5, "original", "bfloat16", member_dims=1)
    ref = torch.stack([_torch_ns(x.reshape(shape[0], -1), ORIGINAL, 5, 1e-7).reshape(shape) for x in xs])
    torch.testing.assert_close(ours, ref.float(), rtol=0, atol=0)


@needs_torch_ns
@pytest.mark.parametrize("shape", [(64, 1536), (1536, 64)], ids=str)
def test_stacked_bfloat16_with_a_long_inner_dim_is_within_bf16_rounding(shape):
    """Here torch's CPU bmm and mm block the long contraction differently: not bit for bit."""
    xs = _randn((3, *shape), torch.float32, seed=7)
    (ours,) = newton_schulz([xs], 5, "original", "bfloat16", member_dims=1)
    ref = torch.stack([_torch_ns(x, ORIGINAL, 5, 1e-7) for x in xs]).float()
    assert _rel(ours, ref) < 2**-5
    (single,) = newton_schulz([xs[0]], 5, "original", "bfloat16", member_dims=0)
    torch.testing.assert_close(single, ref[0], rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("preset", ["original", "polar_express"])
def test_stacked_equals_separate(shape, preset):
    """A [P, ...] stack (P = 3, one batched matmul per tensor) equals each member done alone."""
    stack = [_randn((3, *shape), seed=4), _randn((3, 5, 9), seed=5)]
    ours = newton_schulz(stack, 5, preset, "param", member_dims=1)
    for tensor, result in zip(stack, ours):
        alone = torch.stack([newton_schulz([m], 5, preset, "param", member_dims=0)[0] for m in tensor])
        torch.testing.assert_close(result, alone, rtol=0, atol=1e-14)


def test_stacked_uses_one_batched_matmul_per_iteration():
    """No Python loop over members: 3 matmul calls per iteration, each covering all P members."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.batches = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.bmm, torch.ops.aten.baddbmm, torch.ops.aten.mm,
                                       torch.ops.aten.addmm):
                self.batches.append(args[0].shape[0] if args[0].ndim == 3 else 1)
            return func(*args, **(kwargs or {}))

    with Count() as count:
        newton_schulz([_randn((64, 6, 10))], 5, "original", "bfloat16", member_dims=1)
    assert count.batches == [64] * 15


def test_scale_invariant_and_inputs_untouched():
    x = _randn((3, 10, 6), seed=6)
    before = x.clone()
    (a,) = newton_schulz([x], 5, "quintic", "param", member_dims=1)
    (b,) = newton_schulz([x * torch.tensor([7.3, 0.01, 1e3], dtype=x.dtype).view(3, 1, 1)], 5, "quintic",
                         "param", member_dims=1)
    assert torch.equal(x, before)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (7, 7), (1, 9), (9, 1)], ids=str)
@pytest.mark.parametrize("kind", ["original", "match_rms_adamw"])
def test_shape_scale_matches_torch_adjust_lr(shape, kind):
    expected = torch_muon._adjust_lr(1.0, kind, torch.Size(shape))
    assert shape_scale(shape, kind, member_dims=0) == expected
    assert shape_scale((5, *shape), kind, member_dims=1) == expected
    assert shape_scales([torch.zeros(shape), torch.zeros(2, 3)], kind, 0)[0] == expected


@pytest.mark.parametrize("shape", [(32, 2, 2, 2), (16, 3, 3, 3), (24, 40), (40, 24)], ids=str)
@pytest.mark.parametrize("moonlight", [False, True])
def test_shape_scale_of_conv_uses_the_matrix_view(shape, moonlight):
    """[out, in, kh, kw] scales as [out, in·kh·kw], like pytorch-optimizer's Muon (torch's is 2-D only)."""
    kind = "match_rms_adamw" if moonlight else "original"
    expected = get_adjusted_lr(1.0, shape, use_adjusted_lr=moonlight)
    assert shape_scale(shape, kind, 0) == pytest.approx(expected, rel=1e-15)
    assert shape_scale((4, *shape), kind, 1) == shape_scale(shape, kind, 0)
    assert shape_scale((32, 2, 2, 2), "original", 0) == math.sqrt(32 / 8)


def _net(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(16, 12, generator=gen) * 0.3),
            torch.nn.Parameter(torch.randn(20, 16, generator=gen) * 0.3)]


def _loss(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(32, 12, generator=gen), torch.randn(32, 20, generator=gen)
    w1, w2 = params
    return ((torch.tanh(x @ w1.T) @ w2.T - y) ** 2).mean()


@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_muon_steps_equal_torch_muon(adjust):
    """10 steps of torch.optim.Muon equal momentum + our Newton–Schulz + decay + our scale."""
    lr, wd, beta, steps = 0.02, 0.05, 0.95, 10
    ref_params, our_params = _net(0), _net(0)
    ref = torch.optim.Muon(ref_params, lr=lr, weight_decay=wd, momentum=beta, nesterov=True, adjust_lr_fn=adjust)
    bufs = [torch.zeros_like(p) for p in our_params]
    for step in range(steps):
        ref.zero_grad()
        _loss(ref_params, step).backward()
        ref.step()
        grads = torch.autograd.grad(_loss(our_params, step), our_params)
        with torch.no_grad():
            updates = []
            for g, buf in zip(grads, bufs):
                buf.lerp_(g, 1 - beta)
                updates.append(g.lerp(buf, beta))  # Nesterov
            directions = newton_schulz(updates, 5, "original", "bfloat16", member_dims=0)
            scales = shape_scales(our_params, adjust, member_dims=0)
            for p, o, s in zip(our_params, directions, scales):
                p.mul_(1 - lr * wd)
                p.add_(o, alpha=-lr * s)
    for ours, theirs in zip(our_params, ref_params):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(ref_params[0], _net(0)[0])


BAD = [
    (lambda: newton_schulz([_randn((4, 6))], 5, "cubic", "param", 0), GenomeError,
     r"^orthogonalize: unknown coefficients 'cubic' \(allowed: original, quintic, polar_express, polar_express_safer"),
    (lambda: newton_schulz([_randn((4, 6))], 5, [(1.0, 2.0)], "param", 0), GenomeError,
     r"^orthogonalize: coefficients must be a preset name or \(a, b, c\) triples, got \[\(1.0, 2.0\)\]$"),
    (lambda: newton_schulz([_randn((4, 6))], 5, [], "param", 0), GenomeError, r"must not be an empty list$"),
    (lambda: newton_schulz([_randn((4, 6))], 0, "original", "param", 0), GenomeError,
     r"^orthogonalize: steps must be an integer >= 1, got 0$"),
    (lambda: newton_schulz([_randn((4, 6))], 5, "original", "float16", 0), GenomeError,
     r"^orthogonalize: unknown dtype 'float16' \(allowed: bfloat16, param\)$"),
    (lambda: newton_schulz([_randn((4, 6)), _randn(6)], 5, "original", "param", 0), OptimizerUsageError,
     r"^orthogonalize: tensor 1 has shape \[6\] per member; it needs at least 2 dims"),
    (lambda: newton_schulz([_randn((3, 6))], 5, "original", "param", 1), OptimizerUsageError,
     r"^orthogonalize: tensor 0 has shape \[6\] per member"),
    (lambda: shape_scale((4, 6), "moonlight", 0), GenomeError,
     r"^shape_scale: unknown kind 'moonlight' \(allowed: original, match_rms_adamw, none\)$"),
    (lambda: shape_scale((3, 6), "original", 1), OptimizerUsageError, r"^orthogonalize: a tensor has shape \[6\]"),
]


@pytest.mark.parametrize("call,error,message", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "\n" not in str(info.value)
