"""Fitness: how much better than a tuned Adam a genome trains, per task and overall.

For task k at budget B, with L_s the genome's loss from seed s under the fitness *objective*
and L*_s the same for Adam at its best learning rate (under the same objective) on that task and
budget (tuned once on a grid and cached):

    r_k     = mean_s log(L*_s / L_s)              (paired by seed: same init and data order)
    score_k = sign(r_k) · log(1 + |r_k|)
    fitness = mean_k score_k

The objective (``fitness.objective``) says which loss L is:

* ``heldout_loss`` (the default): the loss on the task's own held-out split after training, at the
  rule's evaluation point (x for schedule-free averaging); it rewards what generalizes, not
  memorizing, and ranks genomes as the held-out suite does a little better than the training loss
  (``evolveopt bench transfer``, docs/fitness.md);
* ``train_loss``: the bias-corrected EMA of the training loss at the last step (runs recorded
  before objectives existed used it, and resume with it);
* ``combined``: the mean of the two log ratios, log(L*/L) averaged over the two losses.

r = 0 is "as good as tuned Adam", r = log 2 "half Adam's loss". The signed log keeps every
difference in rank (no ties from clipping) while a task whose losses differ by orders of
magnitude (training loss going to 0 on a small data set) pulls the mean only logarithmically;
log ratios have no units, so no task dominates by the scale of its loss. A genome that diverged
on any seed of a task, or whose parameters never moved (an all-zero update), gets the worst score,
−5, below any finite one. Held-out metrics are reported next to the fitness; they enter it only
through the held-out objectives. Tasks of the held-out *suite* never enter any fitness.

Learning-rate sweep (``fitness.lr_sweep``: multipliers m_1..m_M, default (1,): off). Each genome
also trains with its ``lr`` gene scaled to lr·m_j (the scaled genomes are members of the same
stacked evaluation), each scored as above against the same tuned Adam: score_k(m_j). The task
score is then their aggregate (``fitness.lr_aggregate``):

    best:      score_k = max_j score_k(m_j)                      (as if the lr were tuned)
    soft_min:  score_k = −τ · log( (1/M) Σ_j exp(−score_k(m_j)/τ) ),   τ = SOFT_MIN_TAU = 0.2

The soft-min lies between the minimum (τ → 0) and the mean (τ → ∞) and is smooth, so, like the
signed log, it keeps every difference in rank; τ = 0.2 is about the spread of task scores among
reasonable rules, so a multiplier 0.2 worse weighs e times more, and a divergence at any
multiplier (−5) pulls the task score close to −5: a rule must be good over the whole range.
docs/fitness.md has a worked example.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from evolveopt.config import RULES, FitnessConfig
from evolveopt.errors import EvaluationError
from evolveopt.evaluation.cache import ResultCache, digest_key, task_identity
from evolveopt.evaluation.evaluator import Evaluation, evaluate
from evolveopt.evaluation.results import MemberResult
from evolveopt.genome import genome_hash, load_genome
from evolveopt.genome.genes import gene_spec
from evolveopt.genome.schema import Genome

ADAM_LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
OBJECTIVES = RULES["fitness.objective"]
DEFAULT_OBJECTIVE = FitnessConfig.objective
LR_AGGREGATES = RULES["fitness.lr_aggregate"]
NO_SWEEP = FitnessConfig.lr_sweep
DEFAULT_LR_AGGREGATE = FitnessConfig.lr_aggregate
SOFT_MIN_TAU = 0.2
WORST_SCORE = -5.0
LOSS_FLOOR = 1e-12  # losses are floored here before the log


@dataclass(frozen=True)
class Baseline:
    """Tuned Adam on one task and budget: its learning rate and its losses per seed under the
    objective it was tuned for (``losses``: the training EMA; ``heldout_losses``: the held-out loss)."""

    task: dict[str, Any]
    budget: int
    lr: float
    losses: dict[int, float]
    heldout_losses: dict[int, float] = field(default_factory=dict)
    objective: str = DEFAULT_OBJECTIVE


@dataclass
class GenomeFitness:
    """Fitness of one genome: the aggregate, per-task scores, held-out medians, failure reasons."""

    fitness: float
    task_scores: dict[str, float]
    heldout: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    by_lr: dict[str, dict[str, float]] = field(default_factory=dict)  # lr multiplier -> task scores (a sweep only)

    def to_json(self) -> dict[str, Any]:
        sweep = {"by_lr": self.by_lr} if self.by_lr else {}
        return {"fitness": self.fitness, "task_scores": self.task_scores, "heldout": self.heldout,
                "failures": self.failures, **sweep}


def heldout_loss(result: MemberResult) -> float:
    """The held-out loss of a member; a task that measures none cannot be scored by it."""
    if "loss" not in result.heldout:
        raise EvaluationError("the fitness objective needs a held-out loss, but this task measures none (its held-out "
                              f"metrics: {', '.join(sorted(result.heldout)) or 'none'}): give it held-out data, or "
                              "set fitness.objective: train_loss")
    return result.heldout["loss"]


def _log_loss(loss: float) -> float:
    return math.log(max(loss, LOSS_FLOOR))


def log_ratio(result: MemberResult, baseline_loss: float, baseline_heldout: float = math.nan,
              objective: str = DEFAULT_OBJECTIVE) -> float | None:
    """log(L*/L) under ``objective`` (the mean of both for ``combined``), or None for a diverged or
    stalled member, or one whose loss is not finite."""
    if result.diverged or result.stalled:
        return None
    ratios = []
    if objective in ("train_loss", "combined"):
        ratios.append((result.ema_loss, baseline_loss))
    if objective in ("heldout_loss", "combined"):
        ratios.append((heldout_loss(result), baseline_heldout))
    if not all(math.isfinite(mine) for mine, _ in ratios):
        return None
    return sum(_log_loss(theirs) - _log_loss(mine) for mine, theirs in ratios) / len(ratios)


def task_score(results: Sequence[MemberResult], baseline_losses: Sequence[float],
               baseline_heldout: Sequence[float] | None = None, objective: str = DEFAULT_OBJECTIVE) -> float:
    """sign(r)·log(1 + |r|) with r the mean log ratio over seeds; the worst score on any failure."""
    heldout = baseline_heldout if baseline_heldout is not None else [math.nan] * len(results)
    ratios = [log_ratio(r, b, h, objective) for r, b, h in zip(results, baseline_losses, heldout)]
    if any(x is None for x in ratios):
        return WORST_SCORE
    r = sum(ratios) / len(ratios)
    return math.copysign(math.log1p(abs(r)), r)


def objective_value(result: MemberResult, objective: str) -> float:
    """The loss Adam's tuning minimizes under ``objective`` (∞ on failure): the training EMA, the
    held-out loss, or their geometric mean."""
    if result.diverged:
        return math.inf
    values = {"train_loss": [result.ema_loss], "heldout_loss": [heldout_loss(result)],
              "combined": [result.ema_loss, heldout_loss(result)]}[objective]
    if not all(math.isfinite(v) for v in values):
        return math.inf
    return math.exp(sum(_log_loss(v) for v in values) / len(values))


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


def baseline_key(task: dict[str, Any], budget: int, seeds: Sequence[int], grid: Sequence[float], adam: Genome,
                 objective: str = DEFAULT_OBJECTIVE) -> str:
    """The cache record key of a tuned baseline: task and its data, budget, seeds, grid, the Adam genome's
    hash and the objective tuned for (absent for train_loss, so older records keep their keys)."""
    from evolveopt.tasks import make_task

    tuned_for = {} if objective == "train_loss" else {"objective": objective}
    return digest_key({"baseline": genome_hash(adam), **task_identity(make_task(task)), "budget": budget,
                       "seeds": list(seeds), "grid": list(grid), **tuned_for})


def tune_adam(task: dict[str, Any], budget: int, seeds: Sequence[int], cache: ResultCache,
              run: Callable[..., Evaluation] = evaluate, grid: Sequence[float] = ADAM_LR_GRID,
              objective: str = DEFAULT_OBJECTIVE) -> Baseline:
    """Adam's (:func:`baseline_genome`) best learning rate on ``grid`` (lowest median loss over seeds
    under ``objective``, among the rates that diverged on no seed); cached."""
    return tune_adam_tasks([task], budget, seeds, cache, run=run, grid=grid, objective=objective)[0]


def tune_adam_tasks(tasks: Sequence[dict[str, Any]], budget: int, seeds: Sequence[int], cache: ResultCache,
                    run: Callable[..., Evaluation] = evaluate,
                    grid: Sequence[float] = ADAM_LR_GRID, objective: str = DEFAULT_OBJECTIVE) -> list[Baseline]:
    """:func:`tune_adam` for every task, the grids of the tasks not yet cached trained in one evaluation
    (their units side by side on the backend's workers, not one task after another). Each task's
    choice depends on its own results only, so it is the one :func:`tune_adam` makes alone."""
    adam = baseline_genome()
    keys = [baseline_key(task, budget, seeds, grid, adam, objective) for task in tasks]
    records = [cache.get_record(key) for key in keys]
    todo = [i for i, record in enumerate(records)  # NaN: an older version
            if record is None or not all(math.isfinite(v) for v in record["losses"].values())
            or (objective != "train_loss" and "heldout_losses" not in record)]
    if todo:
        candidates = [adam.with_genes(lr=lr) for lr in grid]
        evaluation = run(candidates, [tasks[i] for i in todo], budget, seeds, cache=cache)
        for column, i in enumerate(todo):
            per_lr = [per_genome[column] for per_genome in evaluation.results]
            try:
                values = [[objective_value(r, objective) for r in results] for results in per_lr]
            except EvaluationError as exc:
                raise EvaluationError(f"task {evaluation.task_labels[column]}: {exc}") from None
            medians = [math.inf if not all(map(math.isfinite, v)) else statistics.median(v) for v in values]
            best = min(range(len(grid)), key=lambda k: medians[k])
            if not math.isfinite(medians[best]):
                raise EvaluationError(f"task {tasks[i]}, budget {budget}: Adam diverged on some seed of {list(seeds)} "
                                      f"at every learning rate of its grid {list(grid)}; no baseline to score against")
            records[i] = {"lr": grid[best], "losses": {str(s): r.ema_loss for s, r in zip(seeds, per_lr[best])}}
            if objective != "train_loss":
                records[i]["heldout_losses"] = {str(s): heldout_loss(r) for s, r in zip(seeds, per_lr[best])}
            cache.put_record(keys[i], records[i])
    return [Baseline(task, budget, record["lr"], {int(s): v for s, v in record["losses"].items()},
                     {int(s): v for s, v in record.get("heldout_losses", {}).items()}, objective)
            for task, record in zip(tasks, records)]


def score_against(results: Sequence[MemberResult], baseline: Baseline, seeds: Sequence[int], label: str) -> float:
    """:func:`task_score` of one genome's results on one task (one per seed) against its tuned baseline."""
    try:
        return task_score(results, [baseline.losses[s] for s in seeds],
                          [baseline.heldout_losses.get(s, math.nan) for s in seeds], baseline.objective)
    except EvaluationError as exc:
        raise EvaluationError(f"task {label}: {exc}") from None


def score_evaluation(evaluation: Evaluation, baselines: Sequence[Baseline]) -> list[GenomeFitness]:
    """Fitness of every genome of ``evaluation`` against per-task baselines (same order as tasks)."""
    out = []
    for per_genome in evaluation.results:
        task_scores, heldout, failures = {}, {}, []
        for label, per_task, baseline in zip(evaluation.task_labels, per_genome, baselines):
            task_scores[label] = score_against(per_task, baseline, evaluation.seeds, label)
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


def lr_scaled(genome: Genome, multiplier: float) -> Genome:
    """The genome with its ``lr`` gene times ``multiplier`` (held to the gene's range). Its hash, and so
    every result key, holds the scaled rate: a result is shared only by runs that train the same."""
    if multiplier == 1.0:
        return genome
    return genome.with_genes(lr=min(genome.genes["lr"] * multiplier, gene_spec("lr").high))


def aggregate_lr_scores(scores: Sequence[float], how: str) -> float:
    """One task's scores over the multipliers, as one: ``best`` or ``soft_min`` (module docstring)."""
    if how == "best":
        return max(scores)
    if how != "soft_min":
        raise EvaluationError(f"fitness.lr_aggregate {how!r} is not one of {', '.join(LR_AGGREGATES)}")
    low = min(scores)  # shifted so the exponentials stay in range
    return low - SOFT_MIN_TAU * math.log(sum(math.exp(-(s - low) / SOFT_MIN_TAU) for s in scores) / len(scores))


def combine_lr_sweep(by_multiplier: Mapping[float, GenomeFitness], how: str) -> GenomeFitness:
    """A genome's fitness from its fitness at each multiplier: per task the aggregate over multipliers,
    then the mean over tasks. Held-out medians are those at the multiplier nearest 1 (its own lr);
    failures are named with their multiplier."""
    labels = list(next(iter(by_multiplier.values())).task_scores)
    task_scores = {label: aggregate_lr_scores([f.task_scores[label] for f in by_multiplier.values()], how)
                   for label in labels}
    own = min(by_multiplier, key=lambda m: abs(math.log(m)))
    failures = [f"lr×{m:g} {failure}" for m, f in by_multiplier.items() for failure in f.failures]
    return GenomeFitness(sum(task_scores.values()) / len(task_scores), task_scores, by_multiplier[own].heldout,
                         failures, {f"{m:g}": f.task_scores for m, f in by_multiplier.items()})
