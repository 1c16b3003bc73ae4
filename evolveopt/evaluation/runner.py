"""Train one unit of work: P members of one genome structure on one task, as one stacked run.

Member i has its own genes and seed. A member whose loss turns NaN/Inf, or exceeds
``explode_factor`` × its first loss after the warm-up, is frozen at its last parameters and
marked diverged; the other members are untouched (every operation is per member).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from evolveopt.compile.population import PopulationOptimizer
from evolveopt.evaluation.results import MemberResult
from evolveopt.genome.schema import Genome
from evolveopt.tasks import Task

EMA_BETA = 0.9


@dataclass(frozen=True)
class DivergencePolicy:
    """NaN/Inf at any step, or loss > factor × first loss once ``warmup`` of the budget has passed."""

    explode_factor: float = 3.0
    warmup: float = 0.05

    def warmup_steps(self, budget: int) -> int:
        return max(1, int(self.warmup * budget))


@dataclass
class UnitOutcome:
    results: list[MemberResult]
    member_steps: int
    seconds: float


def run_unit(task: Task, genomes: Sequence[Genome], seeds: Sequence[int], budget: int,
             device: torch.device | str = "cpu", policy: DivergencePolicy = DivergencePolicy()) -> UnitOutcome:
    """Train ``genomes[i]`` from ``seeds[i]`` for ``budget`` steps, all at once.

    Every genome must have the same structure and gene names (canonical forms of one structure
    key do); the first one's structure is compiled.
    """
    start = time.perf_counter()
    run = task.start(seeds, device)
    genes = {n: torch.tensor([g.genes[n] for g in genomes], dtype=run.params[0].dtype, device=device)
             for n in genomes[0].genes}
    optimizer = PopulationOptimizer(genomes[0], run.params, genes, total_steps=budget)
    tracker = _Tracker(len(genomes), budget, policy, device)
    for step in range(1, budget + 1):
        losses = run.loss(step)
        grads = torch.autograd.grad(losses.sum(), run.params)
        tracker.observe(step, losses.detach())
        if tracker.any_frozen:
            before = [p.detach().clone() for p in run.params]
            optimizer.step(grads, loss=losses.detach())
            tracker.restore_frozen(run.params, before)
        else:
            optimizer.step(grads, loss=losses.detach())
        if tracker.all_frozen:
            break
    heldout = {k: v.detach().cpu().tolist() for k, v in run.heldout().items()}
    results = tracker.results(heldout)
    return UnitOutcome(results, member_steps=len(genomes) * tracker.steps_run, seconds=time.perf_counter() - start)


class _Tracker:
    """Per-member loss EMA, last loss, and divergence state."""

    def __init__(self, members: int, budget: int, policy: DivergencePolicy, device: Any):
        self.budget, self.policy = budget, policy
        self.ema = torch.zeros(members, dtype=torch.float64, device=device)
        self.last = torch.full((members,), math.nan, dtype=torch.float64, device=device)
        self.first: torch.Tensor | None = None
        self.frozen = torch.zeros(members, dtype=torch.bool, device=device)
        self.frozen_at = [0] * members
        self.reasons = [""] * members
        self.steps_run = 0
        self.any_frozen = self.all_frozen = False

    def observe(self, step: int, losses: torch.Tensor) -> None:
        losses = losses.to(torch.float64)
        alive = ~self.frozen
        self.steps_run = step
        if self.first is None:
            self.first = losses.clone()
        self.ema = torch.where(alive, EMA_BETA * self.ema + (1 - EMA_BETA) * losses, self.ema)
        self.last = torch.where(alive, losses, self.last)
        bad = alive & ~torch.isfinite(losses)
        exploded = alive & torch.isfinite(losses) & (losses > self.policy.explode_factor * self.first)
        if step > self.policy.warmup_steps(self.budget):
            bad = bad | exploded
        if bool(bad.any()):
            for i in torch.nonzero(bad).flatten().tolist():
                value = float(losses[i])
                self.reasons[i] = (f"non-finite loss at step {step}" if not math.isfinite(value) else
                                   f"loss {value:.3g} > {self.policy.explode_factor:g} x initial at step {step}")
                self.frozen_at[i] = step
            self.frozen |= bad
            self.any_frozen = True
            self.all_frozen = bool(self.frozen.all())

    @torch.no_grad()
    def restore_frozen(self, params: list[torch.Tensor], before: list[torch.Tensor]) -> None:
        for p, old in zip(params, before):
            mask = self.frozen.view(-1, *([1] * (p.ndim - 1)))
            p.copy_(torch.where(mask, old, p))

    def results(self, heldout: dict[str, list[float]]) -> list[MemberResult]:
        correction = 1 - EMA_BETA ** self.steps_run
        ema = (self.ema / correction).cpu().tolist()
        last = self.last.cpu().tolist()
        first = self.first.cpu().tolist()
        out = []
        for i in range(len(ema)):
            diverged = bool(self.frozen[i])
            out.append(MemberResult(
                final_loss=math.nan if diverged else last[i],
                ema_loss=math.nan if diverged else ema[i],
                initial_loss=first[i],
                heldout={k: (math.nan if diverged else v[i]) for k, v in heldout.items()},
                diverged=diverged, reason=self.reasons[i],
                steps=self.frozen_at[i] if diverged else self.steps_run,
            ))
        return out
