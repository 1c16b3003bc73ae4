"""The benchmark protocol: equal tuning for every optimizer, then fresh seeds.

For every task and every optimizer (a genome):

1. **Tuning**: the same ``trials`` quasi-random settings (a Halton sequence) from one shared
   space — learning rate log-uniform in ``lr_range`` and, for genomes that have the gene, weight
   decay log-uniform in ``wd_range`` — trained from the tuning seeds; the setting with the
   lowest median final training loss (EMA) wins. Every optimizer gets the same trials.
2. **Evaluation**: the winning setting trained from ``seeds`` fresh seeds that played no part in
   tuning (nor in any search: they start at 10,000).

Every run of one task (all optimizers × settings × seeds) trains as one stacked population.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from evolveopt.evaluation.cache import ResultCache
from evolveopt.evaluation.evaluator import UnitResult, WorkUnit, evaluate
from evolveopt.evaluation.results import MemberResult
from evolveopt.genome.schema import Genome
from evolveopt.tasks import make_task

FRESH_SEED_BASE = 10_000
TUNING_SEED_BASE = 20_000


@dataclass(frozen=True)
class BenchmarkSettings:
    tasks: tuple[dict[str, Any], ...]
    budget: int = 500
    trials: int = 8
    seeds: int = 5
    tuning_seeds: int = 1
    lr_range: tuple[float, float] = (1e-5, 1.0)
    wd_range: tuple[float, float] = (1e-6, 1e-1)
    max_members: int = 512
    device: str = "cpu"

    @property
    def fresh_seeds(self) -> list[int]:
        return [FRESH_SEED_BASE + i for i in range(self.seeds)]

    @property
    def tuning_seed_list(self) -> list[int]:
        return [TUNING_SEED_BASE + i for i in range(self.tuning_seeds)]


def halton(index: int, base: int) -> float:
    """The ``index``-th (1-based) element of the van der Corput sequence in ``base``."""
    result, fraction = 0.0, 1.0
    while index > 0:
        fraction /= base
        result += fraction * (index % base)
        index //= base
    return result


def trial_points(settings: BenchmarkSettings) -> list[dict[str, float]]:
    """The shared tuning settings: Halton points (bases 2 and 3) mapped to log lr and log wd."""
    (lr_lo, lr_hi), (wd_lo, wd_hi) = settings.lr_range, settings.wd_range
    points = []
    for i in range(1, settings.trials + 1):
        u, v = halton(i, 2), halton(i, 3)
        points.append({"lr": math.exp(math.log(lr_lo) + u * (math.log(lr_hi) - math.log(lr_lo))),
                       "weight_decay": math.exp(math.log(wd_lo) + v * (math.log(wd_hi) - math.log(wd_lo)))})
    return points


def with_setting(genome: Genome, setting: dict[str, float]) -> Genome:
    """The genome with the trial's learning rate and, if it has the gene, weight decay."""
    return genome.with_genes(**{k: v for k, v in setting.items() if k in genome.genes})


@dataclass
class OptimizerOnTask:
    """One optimizer's benchmark on one task: tuning outcome and fresh-seed results."""

    setting: dict[str, float]
    tuning_losses: list[float]
    results: list[MemberResult] = field(default_factory=list)


@dataclass
class TaskBenchmark:
    task: dict[str, Any]
    label: str
    budget: int
    optimizers: dict[str, OptimizerOnTask]
    seconds: float = 0.0


def _median(values: Sequence[float]) -> float:
    finite = [v if math.isfinite(v) else math.inf for v in values]
    return statistics.median(finite) if finite else math.inf


def run_task(genomes: dict[str, Genome], task: dict[str, Any], settings: BenchmarkSettings, cache: ResultCache,
             map_units: Callable[[list[WorkUnit]], list[UnitResult]] | None = None) -> TaskBenchmark:
    """Tune every optimizer on ``task`` with the shared trials, then train the winners on fresh seeds."""
    start = time.perf_counter()
    points = trial_points(settings)
    names = list(genomes)
    candidates = [with_setting(genomes[n], p) for n in names for p in points]
    tuning = evaluate(candidates, [task], settings.budget, settings.tuning_seed_list, cache=cache,
                      device=settings.device, max_members=settings.max_members, map_units=map_units)
    chosen: dict[str, OptimizerOnTask] = {}
    winners = []
    for i, name in enumerate(names):
        losses = [_median([r.ema_loss if not r.diverged else math.inf for r in tuning.results[i * len(points) + j][0]])
                  for j in range(len(points))]
        best = min(range(len(points)), key=lambda j: (losses[j], j))
        setting = {k: v for k, v in points[best].items() if k in genomes[name].genes}
        chosen[name] = OptimizerOnTask(setting, losses)
        winners.append(candidates[i * len(points) + best])
    final = evaluate(winners, [task], settings.budget, settings.fresh_seeds, cache=cache, device=settings.device,
                     max_members=settings.max_members, map_units=map_units)
    for name, per_genome in zip(names, final.results):
        chosen[name].results = list(per_genome[0])
    return TaskBenchmark(task, make_task(task).label, settings.budget, chosen, time.perf_counter() - start)


def run_benchmark(genomes: dict[str, Genome], settings: BenchmarkSettings, cache: ResultCache | None = None,
                  map_units: Callable[[list[WorkUnit]], list[UnitResult]] | None = None,
                  on_task: Callable[[TaskBenchmark], None] | None = None) -> list[TaskBenchmark]:
    """The protocol over every task of ``settings`` (see the module docstring)."""
    cache = cache if cache is not None else ResultCache()
    out = []
    for task in settings.tasks:
        result = run_task(genomes, task, settings, cache, map_units)
        out.append(result)
        if on_task is not None:
            on_task(result)
    return out
