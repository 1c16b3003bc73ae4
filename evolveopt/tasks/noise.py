"""Counter-based random numbers: member i's draws depend only on (seeds[i], step, stream, index).

Each value is a pure function of its coordinates, so a member sees the same numbers in a
population of any size, on any device, with no generator state to carry. The hash is
splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
OOPSLA 2014) written with vectorized int64 ops: multiplication wraps modulo 2⁶⁴ and the right
shifts are masked to act as logical shifts. Normals use the Box–Muller transform on two 32-bit
halves of one hash, computed in float64 and rounded to the requested dtype.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


GOLDEN_GAMMA = _signed(0x9E3779B97F4A7C15)
MIX_1 = _signed(0xBF58476D1CE4E5B9)
MIX_2 = _signed(0x94D049BB133111EB)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int64 bits (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finalizer: a bijection of 64-bit words with full avalanche."""
    x = (x ^ _shift_right(x, 30)) * MIX_1
    x = (x ^ _shift_right(x, 27)) * MIX_2
    return x ^ _shift_right(x, 31)


def member_bits(seeds: Tensor, step: int, shape: Sequence[int], stream: int = 0) -> Tensor:
    """``[P, *shape]`` int64 words of 64 random bits: a splitmix64 stream keyed by (seed, step, stream)."""
    key = seeds.to(torch.int64).view(-1, 1)
    for value in (step, stream):
        key = _mix(key + GOLDEN_GAMMA) ^ value
    key = _mix(key + GOLDEN_GAMMA)
    count = math.prod(shape)
    index = torch.arange(1, count + 1, dtype=torch.int64, device=seeds.device)
    return _mix(key + index * GOLDEN_GAMMA).view(-1, *shape)


def member_uniform(seeds: Tensor, step: int, shape: Sequence[int], device: torch.device | str | None = None,
                   stream: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[P, *shape]`` uniforms in [0, 1) with 24 random bits (exact in float32)."""
    bits = member_bits(seeds.to(device), step, shape, stream)
    return (_shift_right(bits, 40).to(torch.float64) * 2.0**-24).to(dtype)


def member_randint(seeds: Tensor, step: int, shape: Sequence[int], high: int,
                   device: torch.device | str | None = None, stream: int = 0) -> Tensor:
    """``[P, *shape]`` int64 integers in [0, high) (modulo bias below high / 2⁶³)."""
    return _shift_right(member_bits(seeds.to(device), step, shape, stream), 1) % high


def member_normal(seeds: Tensor, step: int, shape: Sequence[int], device: torch.device | str | None = None,
                  stream: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[P, *shape]`` standard normals by Box–Muller on the two 32-bit halves of each hash."""
    bits = member_bits(seeds.to(device), step, shape, stream)
    high = (_shift_right(bits, 32).to(torch.float64) + 0.5) * 2.0**-32  # in (0, 1): log is finite
    low = (bits & 0xFFFFFFFF).to(torch.float64) * 2.0**-32
    return (torch.sqrt(-2.0 * torch.log(high)) * torch.cos(2.0 * math.pi * low)).to(dtype)


def seed_tensor(seeds: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """``[P]`` int64 seeds on ``device``, the form the draws above take."""
    return torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device)
