"""The noisy quadratic model (Zhang et al., "Which algorithmic choices matter at which batch
sizes? Insights from a noisy quadratic model", NeurIPS 2019, arXiv 1907.04164).

A diagonal quadratic f(θ) = ½ Σ h_i θ_i² with curvatures h_i log-spaced from 1 to κ
(``condition``). The stochastic gradient of a minibatch of size b at step t is

    g_t = H θ − n,   n_i ~ N(0, h_i / b),

the true gradient plus noise whose covariance H / b follows the curvature and shrinks with the
batch size, as in the paper. The training loss reported each step is the objective f(θ)
itself (positive, so fitness can take log ratios); the noise enters only its gradient, through
the term −Σθ n − (−Σθ n) that is zero in value. The held-out metric is f(θ) too.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from evolveopt.tasks.base import Option, Task, TaskRun, generator, stack_members
from evolveopt.tasks.noise import member_normal, seed_tensor


def curvatures(dim: int, condition: float) -> Tensor:
    """h_i log-spaced from 1 to ``condition``."""
    return torch.logspace(0.0, math.log10(condition), dim)


class NoisyQuadraticRun(TaskRun):
    def __init__(self, params: list[Tensor], seeds: Tensor, curvature: Tensor, batch_size: int):
        self.params, self.seeds, self.curvature = params, seeds, curvature
        self.noise_scale = (curvature / batch_size).sqrt()

    def noiseless(self) -> Tensor:
        theta = self.params[0]
        return 0.5 * (self.curvature * theta**2).sum(1)

    def loss(self, step: int) -> Tensor:
        noise = self.noise_scale * member_normal(self.seeds, step, self.curvature.shape)
        noise_term = -(self.params[0] * noise).sum(1)
        return self.noiseless() + (noise_term - noise_term.detach())

    @torch.no_grad()
    def heldout(self) -> dict[str, Tensor]:
        return {"loss": self.noiseless()}


class NoisyQuadratic(Task):
    """Diagonal noisy quadratic: curvature 1…κ, gradient noise with covariance H / batch_size."""

    name = "nqm"
    description = "noisy quadratic model (Zhang et al. 2019): curvature 1..condition, noise covariance H/batch"
    OPTIONS = {
        "dim": Option(100, (2, 100_000), numeric=True, doc="number of coordinates"),
        "condition": Option(1e4, (1e3, 1e6), numeric=True, doc="largest / smallest curvature"),
        "batch_size": Option(32, (1, 1_000_000), numeric=True, doc="noise variance is h_i / batch_size"),
    }

    def start(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> NoisyQuadraticRun:
        dim = self.options["dim"]
        params = stack_members([[torch.randn(dim, generator=generator(s))] for s in seeds], device)
        curvature = curvatures(dim, self.options["condition"]).to(device)
        return NoisyQuadraticRun(params, seed_tensor(seeds, device), curvature, self.options["batch_size"])

    def activation_bytes(self) -> int:
        return 4 * 4 * self.options["dim"]
