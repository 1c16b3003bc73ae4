"""Fitness: how much better than a tuned Adam a genome trains, per task and overall.

For task k at budget B, with L_s the bias-corrected EMA of the training loss at the last step
from seed s and L*_s the same for Adam at its best learning rate on that task and budget (tuned
once on a grid and cached):

    r_k     = mean_s log(L*_s / L_s)              (paired by seed: same init and data order)
    score_k = sign(r_k) · log(1 + |r_k|)
    fitness = mean_k score_k

r = 0 is "as good as tuned Adam", r = log 2 "half Adam's loss". The signed log keeps every
difference in rank (no ties from clipping) while a task whose losses differ by orders of
magnitude (training loss going to 0 on a small data set) pulls the mean only logarithmically;
log ratios have no units, so no task dominates by the scale of its loss. A genome that diverged
on any seed of a task, or whose parameters never moved (an all-zero update), gets the worst score,
−5, below any finite one. Held-out metrics are reported next to the fitness and never enter it.
docs/fitness.md has a worked example.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from evolveopt.errors import EvaluationError
from evolveopt.evaluation.cache import ResultCache, digest_key, task_identity
from evolveopt.evaluation.evaluator import Evaluation, evaluate
from evolveopt.evaluation.results import MemberResult
from evolveopt.genome import genome_hash, load_genome
from evolveopt.genome.schema import Genome

ADAM_LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
WORST_SCORE = -5.0
LOSS_FLOOR = 1e-12  # losses are floored here before the log


@dataclass(frozen=True)
class Baseline:
    """Tuned Adam on one task and budget: its learning rate and EMA loss per seed."""

    task: dict[str, Any]
    budget: int
    lr: float
    losses: dict[int, float]


@dataclass
class GenomeFitness:
    """Fitness of one genome: the aggregate, per-task scores, held-out medians, failure reasons."""

    fitness: float
    task_scores: dict[str, float]
    heldout: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"fitness": self.fitness, "task_scores": self.task_scores, "heldout": self.heldout,
                "failures": self.failures}


def log_ratio(result: MemberResult, baseline_loss: float) -> float | None:
    """log(L*/L), or None for a diverged or stalled member."""
    if result.diverged or result.stalled or not math.isfinite(result.ema_loss):
        return None
    return math.log(max(baseline_loss, LOSS_FLOOR)) - math.log(max(result.ema_loss, LOSS_FLOOR))


def task_score(results: Sequence[MemberResult], baseline_losses: Sequence[float]) -> float:
    """sign(r)·log(1 + |r|) with r the mean log ratio over seeds; the worst score on any failure."""
    ratios = [log_ratio(r, b) for r, b in zip(results, baseline_losses)]
    if any(x is None for x in ratios):
        return WORST_SCORE
    r = sum(ratios) / len(ratios)
    return math.copysign(math.log1p(abs(r)), r)


def failure_reason(result: MemberResult) -> str:
    if result.diverged:
        return result.reason
    if result.stalled:
        return "no progress: the update is all zeros, the parameters never moved"
    return ""


def baseline_genome() -> Genome:
    """The Adam that fitness is measured against: the genome named ``adam``, resolved like every
    named genome ($EVOLVEOPT_GENOMES, then ./genomes, then the bundled set), so a genomes/adam.yaml
    in the working directory replaces the bundled one; baseline keys hold its hash."""
    return load_genome("adam")


def baseline_key(task: dict[str, Any], budget: int, seeds: Sequence[int], grid: Sequence[float], adam: Genome) -> str:
    """The cache record key of a tuned baseline: task and its data, budget, seeds, grid, the Adam genome's hash."""
    from evolveopt.tasks import make_task

    return digest_key({"baseline": genome_hash(adam), **task_identity(make_task(task)), "budget": budget,
                       "seeds": list(seeds), "grid": list(grid)})


def tune_adam(task: dict[str, Any], budget: int, seeds: Sequence[int], cache: ResultCache,
              run: Callable[..., Evaluation] = evaluate, grid: Sequence[float] = ADAM_LR_GRID) -> Baseline:
    """Adam's (:func:`baseline_genome`) best learning rate on ``grid`` (lowest median EMA loss over
    seeds, among the rates that diverged on no seed); cached."""
    return tune_adam_tasks([task], budget, seeds, cache, run=run, grid=grid)[0]


def tune_adam_tasks(tasks: Sequence[dict[str, Any]], budget: int, seeds: Sequence[int], cache: ResultCache,
                    run: Callable[..., Evaluation] = evaluate,
                    grid: Sequence[float] = ADAM_LR_GRID) -> list[Baseline]:
    """:func:`tune_adam` for every task, the grids of the tasks not yet cached trained in one evaluation
    (their units side by side on the backend's workers, not one task after another). Each task's
    choice depends on its own results only, so it is the one :func:`tune_adam` makes alone."""
    adam = baseline_genome()
    keys = [baseline_key(task, budget, seeds, grid, adam) for task in tasks]
    records = [cache.get_record(key) for key in keys]
    todo = [i for i, record in enumerate(records)  # NaN: an older version
            if record is None or not all(math.isfinite(v) for v in record["losses"].values())]
    if todo:
        candidates = [adam.with_genes(lr=lr) for lr in grid]
        evaluation = run(candidates, [tasks[i] for i in todo], budget, seeds, cache=cache)
        for column, i in enumerate(todo):
            per_lr = [per_genome[column] for per_genome in evaluation.results]
            medians = [math.inf if any(r.diverged or not math.isfinite(r.ema_loss) for r in results)
                       else statistics.median(r.ema_loss for r in results) for results in per_lr]
            best = min(range(len(grid)), key=lambda k: medians[k])
            if not math.isfinite(medians[best]):
                raise EvaluationError(f"task {tasks[i]}, budget {budget}: Adam diverged on some seed of {list(seeds)} "
                                      f"at every learning rate of its grid {list(grid)}; no baseline to score against")
            records[i] = {"lr": grid[best], "losses": {str(s): r.ema_loss for s, r in zip(seeds, per_lr[best])}}
            cache.put_record(keys[i], records[i])
    return [Baseline(task, budget, record["lr"], {int(s): v for s, v in record["losses"].items()})
            for task, record in zip(tasks, records)]


def score_evaluation(evaluation: Evaluation, baselines: Sequence[Baseline]) -> list[GenomeFitness]:
    """Fitness of every genome of ``evaluation`` against per-task baselines (same order as tasks)."""
    out = []
    for per_genome in evaluation.results:
        task_scores, heldout, failures = {}, {}, []
        for label, per_task, baseline in zip(evaluation.task_labels, per_genome, baselines):
            task_scores[label] = task_score(per_task, [baseline.losses[s] for s in evaluation.seeds])
            heldout[label] = _median_metrics(per_task)
            failures += [f"{label} seed {s}: {failure_reason(r)}" for s, r in zip(evaluation.seeds, per_task)
                         if failure_reason(r)]
        fitness = sum(task_scores.values()) / len(task_scores)
        if not math.isfinite(fitness):  # a bug: every score above is finite by construction
            raise ArithmeticError(f"fitness {fitness} is not finite (task scores {task_scores})")
        out.append(GenomeFitness(fitness, task_scores, heldout, failures))
    return out


def _median_metrics(results: Sequence[MemberResult]) -> dict[str, float]:
    names = sorted({k for r in results for k in r.heldout})
    medians = {}
    for name in names:
        values = [r.heldout[name] for r in results if math.isfinite(r.heldout.get(name, math.nan))]
        medians[name] = statistics.median(values) if values else math.nan
    return medians
