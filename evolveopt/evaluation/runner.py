"""Train one unit of work: P members on one task, as one stacked run.

Member i has its own genome and seed. The forward and backward pass runs once for all P
models whatever their optimizers; then each run of consecutive members that share a structure
is updated by one :class:`PopulationOptimizer` over its slice of the stacked tensors (callers
sort members by structure, so a unit has few such groups). A member whose loss turns NaN/Inf,
or exceeds ``explode_factor`` × its first loss after the warm-up, is frozen at its last
parameters and marked diverged; the other members are untouched (every operation is per member).

Training losses (the final loss, its EMA, the curve) are measured where the rule takes its
gradients; for a genome with schedule-free averaging that is y. When training ends every
optimizer moves its members to their evaluation point (x for schedule-free averaging, the
parameters themselves otherwise), so held-out metrics, and anything that reads ``run.params``
afterwards, see x.

A member's result is bit-for-bit the same whatever unit it trains in (its size, its other
members, its position; ``tests/test_evaluate.py``), so a cache may hand out a result computed
in any unit. Two things would break that, and are avoided:

* genes as Python floats where every member of a group shares them (the fast path of
  :class:`PopulationOptimizer`) round differently from the ``[P]`` gene tensors of a mixed
  group; only shared zeros become floats here (skipping a zero term is exact);
* torch multiplies a stack of one matrix with its plain GEMM (multithreaded: long reductions
  such as weight gradients over a large batch are split across threads; and for some shapes
  another kernel even on one thread) and a stack of two or more with the batched GEMM, one
  matrix per thread; a unit of one member therefore trains beside a twin (the same genome and
  seed), whose result is dropped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from evolveopt.compile.population import PopulationOptimizer
from evolveopt.evaluation.results import MemberResult
from evolveopt.genome.canonical import structure_key
from evolveopt.genome.schema import Genome
from evolveopt.tasks import Task, TaskRun

EMA_BETA = 0.9
CURVE_POINTS = 32


def curve_steps(budget: int, points: int = CURVE_POINTS) -> list[int]:
    """The steps at which the loss curve is recorded: evenly spaced, ending at the budget."""
    count = min(points, budget)
    return sorted({max(1, round(budget * (i + 1) / count)) for i in range(count)})


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
    """Train ``genomes[i]`` from ``seeds[i]`` for ``budget`` steps, all at once; one result each."""
    start = time.perf_counter()
    members = len(genomes)
    if members == 1:  # a stack of one takes another GEMM than a stack of two (module docstring): add a twin
        genomes, seeds = [genomes[0]] * 2, [seeds[0]] * 2
    run, tracker = train_population(task, genomes, seeds, budget, device, policy)
    heldout = {k: v.detach().cpu().tolist() for k, v in run.heldout().items()}
    return UnitOutcome(tracker.results(heldout, tracker.moved(run.params))[:members],
                       member_steps=members * tracker.steps_run, seconds=time.perf_counter() - start)


def train_population(task: Task, genomes: Sequence[Genome], seeds: Sequence[int], budget: int,
                     device: torch.device | str = "cpu", policy: DivergencePolicy = DivergencePolicy()
                     ) -> tuple[TaskRun, "_Tracker"]:
    """The training loop of :func:`run_unit`; returns the trained run, its parameters at their
    evaluation point (``PopulationOptimizer.eval``), and the loss tracker."""
    run = task.start(seeds, device)
    groups = [(a, b, _group_optimizer(genomes[a:b], run.params, a, b, budget)) for a, b in structure_runs(genomes)]
    tracker = _Tracker(len(genomes), budget, policy, device, initial=[p.detach().clone() for p in run.params])
    for step in range(1, budget + 1):
        losses = run.loss(step)
        grads = torch.autograd.grad(losses.sum(), run.params)
        detached = losses.detach()
        tracker.observe(step, detached)
        before = [p.detach().clone() for p in run.params] if tracker.any_frozen else None
        for a, b, optimizer in groups:
            optimizer.step([g[a:b] for g in grads], loss=detached[a:b])
        if before is not None:
            tracker.restore_frozen(run.params, before)
        if tracker.all_frozen:
            break
    for _, _, optimizer in groups:
        optimizer.eval()
    return run, tracker


def structure_runs(genomes: Sequence[Genome]) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive genomes that share a structure key."""
    keys = [structure_key(g) for g in genomes]
    runs, start = [], 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            runs.append((start, i))
            start = i
    return runs


def _group_optimizer(genomes: Sequence[Genome], params: list[torch.Tensor], a: int, b: int,
                     budget: int) -> PopulationOptimizer:
    views = [p.detach()[a:b] for p in params]
    genes = {n: torch.tensor([g.genes[n] for g in genomes], dtype=views[0].dtype, device=views[0].device)
             for n in genomes[0].genes}
    return PopulationOptimizer(genomes[0], views, genes, total_steps=budget, shared_floats=False)


class _Tracker:
    """Per-member loss EMA, last loss, and divergence state."""

    def __init__(self, members: int, budget: int, policy: DivergencePolicy, device: Any,
                 initial: list[torch.Tensor] | None = None):
        self.budget, self.policy, self.initial = budget, policy, initial
        self.ema = torch.zeros(members, dtype=torch.float64, device=device)
        self.last = torch.full((members,), math.nan, dtype=torch.float64, device=device)
        self.first: torch.Tensor | None = None
        self.frozen = torch.zeros(members, dtype=torch.bool, device=device)
        self.frozen_at = [0] * members
        self.reasons = [""] * members
        self.steps_run = 0
        self.any_frozen = self.all_frozen = False
        self.checkpoints = set(curve_steps(budget))
        self.curve: list[torch.Tensor] = []

    def observe(self, step: int, losses: torch.Tensor) -> None:
        losses = losses.to(torch.float64)
        alive = ~self.frozen
        self.steps_run = step
        if self.first is None:
            self.first = losses.clone()
        self.ema = torch.where(alive, EMA_BETA * self.ema + (1 - EMA_BETA) * losses, self.ema)
        self.last = torch.where(alive, losses, self.last)
        if step in self.checkpoints:
            self.curve.append(self.ema / (1 - EMA_BETA**step))
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

    @torch.no_grad()
    def moved(self, params: list[torch.Tensor]) -> list[bool]:
        """Per member: did any parameter change since the start?"""
        changed = torch.zeros_like(self.frozen)
        for p, p0 in zip(params, self.initial):
            changed |= (p != p0).reshape(p.shape[0], -1).any(1)
        return changed.cpu().tolist()

    def results(self, heldout: dict[str, list[float]], moved: list[bool] | None = None) -> list[MemberResult]:
        correction = 1 - EMA_BETA ** self.steps_run
        ema = (self.ema / correction).cpu().tolist()
        last = self.last.cpu().tolist()
        first = self.first.cpu().tolist()
        curves = torch.stack(self.curve, 1).cpu().tolist() if self.curve else [[] for _ in ema]
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
                moved=True if moved is None else moved[i],
                curve=[] if diverged else curves[i],
            ))
        return out
