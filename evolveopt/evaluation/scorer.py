"""The fitness function the search calls: tasks, budget and seeds fixed, genomes in, fitness out."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

from evolveopt.errors import EvaluationError
from evolveopt.evaluation.cache import ResultCache
from evolveopt.evaluation.evaluator import Evaluation, MapUnits, OnProgress, evaluate
from evolveopt.evaluation.halving import RungOutcome, successive_halving
from evolveopt.evaluation.fitness import (DEFAULT_LR_AGGREGATE, DEFAULT_OBJECTIVE, LR_AGGREGATES, NO_SWEEP,
                                          OBJECTIVES, Baseline, GenomeFitness, combine_lr_sweep, lr_scaled,
                                          score_evaluation, tune_adam_tasks)
from evolveopt.genome.schema import Genome


@dataclass(frozen=True)
class FitnessSettings:
    tasks: list[dict[str, Any]]
    budget: int
    seeds: list[int]
    eta: int = 3
    rungs: int = 3  # 1 turns successive halving off
    max_members: int | None = None  # None: evaluation.sizing.default_max_members
    device: str = "cpu"
    workers: int = 1  # the backend's parallel workers: units are cut so that each gets one
    objective: str = DEFAULT_OBJECTIVE  # which loss the fitness compares (fitness.OBJECTIVES)
    speculate: bool = True  # with a backend of several workers: rungs overlap by speculative promotion (pipeline.py)
    lr_sweep: tuple[float, ...] = NO_SWEEP  # lr multipliers each genome trains at (fitness.py); (1.0,): none
    lr_aggregate: str = DEFAULT_LR_AGGREGATE  # how a task's scores over the sweep become one (fitness.LR_AGGREGATES)


@dataclass
class ScorerStats:
    member_steps: int = 0
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    threads: set[int] = field(default_factory=set)  # CPU thread counts units ran with
    nodes: set[str] = field(default_factory=set)  # Ray node IDs units ran on
    evaluations: list[Evaluation] = field(default_factory=list, repr=False)
    speculative_steps: int = 0  # member-steps trained ahead of a promotion (pipeline.py), used or not
    speculative_used_steps: int = 0  # of those, the members that were promoted: their results were used


class FitnessScorer:
    """Scores genomes against tuned Adam on the settings' tasks (with successive halving).

    ``on_progress`` receives every :class:`UnitProgress` of the evaluations it runs, marked with
    the stage (Adam's baseline grid or the genomes) and, under successive halving, the rung.
    ``backend``: one with ``submit`` / ``next_result`` and several workers runs successive halving
    with its rungs overlapping (:class:`~evolveopt.evaluation.pipeline.HalvingPipeline`) unless
    ``settings.speculate`` is off; the results are the same either way.
    """

    def __init__(self, settings: FitnessSettings, cache: ResultCache | None = None,
                 map_units: MapUnits | None = None, on_progress: OnProgress | None = None, backend: Any = None):
        if settings.objective not in OBJECTIVES:
            raise EvaluationError(f"fitness objective {settings.objective!r} is not one of {', '.join(OBJECTIVES)}")
        if settings.lr_aggregate not in LR_AGGREGATES:
            raise EvaluationError(f"fitness lr_aggregate {settings.lr_aggregate!r} is not one of "
                                  f"{', '.join(LR_AGGREGATES)}")
        if not settings.lr_sweep or any(not m > 0 for m in settings.lr_sweep):
            raise EvaluationError(f"fitness lr_sweep {settings.lr_sweep!r}: expected positive multipliers")
        self.settings = settings
        self.cache = cache if cache is not None else ResultCache()
        self.map_units = map_units
        self.on_progress = on_progress
        self.stats = ScorerStats()
        self._baselines: dict[int, list[Baseline]] = {}
        self._rung: tuple[int | None, int] = (None, 1)  # (rung, rungs) of the successive halving under way
        self.pipeline = None
        if backend is not None and settings.speculate and getattr(backend, "workers", 1) > 1 \
                and hasattr(backend, "submit") and settings.rungs > 1:
            from evolveopt.evaluation.pipeline import HalvingPipeline

            self.pipeline = HalvingPipeline(self, backend)

    def _evaluate(self, genomes: Sequence[Genome], tasks: Sequence[Any], budget: int, seeds: Sequence[int],
                  cache: ResultCache, stage: str = "genomes") -> Evaluation:
        evaluation = evaluate(genomes, tasks, budget, seeds, cache=cache, device=self.settings.device,
                              max_members=self.settings.max_members, map_units=self.map_units,
                              workers=self.settings.workers,
                              on_progress=self._reporter(stage))
        self.count(evaluation)
        return evaluation

    def count(self, evaluation: Evaluation) -> None:
        """Add an evaluation's work, cache look-ups, threads and nodes to :attr:`stats`."""
        self.stats.member_steps += evaluation.member_steps
        self.stats.seconds += evaluation.seconds
        self.stats.cache_hits += evaluation.cache_hits
        self.stats.cache_misses += evaluation.cache_misses
        self.stats.threads.update(evaluation.threads)
        self.stats.nodes.update(evaluation.nodes)

    def _reporter(self, stage: str) -> OnProgress | None:
        if self.on_progress is None:
            return None
        rung, rungs = self._rung
        send = self.on_progress
        return lambda event: send(replace(event, stage=stage, rung=rung, rungs=rungs))

    def baselines(self, budget: int) -> list[Baseline]:
        if budget not in self._baselines:
            s = self.settings
            run = lambda *a, **k: self._evaluate(*a, cache=k["cache"], stage="baseline")  # noqa: E731
            self._baselines[budget] = tune_adam_tasks(s.tasks, budget, s.seeds, self.cache, run=run,
                                                      objective=s.objective)  # tasks side by side
        return self._baselines[budget]

    def score(self, genomes: Sequence[Genome], budget: int | None = None) -> list[GenomeFitness]:
        """Fitness of each genome at ``budget`` (default: the full budget)."""
        budget = budget or self.settings.budget
        baselines = self.baselines(budget)
        evaluation = self._evaluate(self.lr_variants(genomes), self.settings.tasks, budget, self.settings.seeds,
                                    self.cache)
        return self.score_variants(evaluation, baselines)

    def lr_variants(self, genomes: Sequence[Genome]) -> list[Genome]:
        """What an evaluation of ``genomes`` trains: each genome at every multiplier of the lr sweep, side
        by side (the genomes themselves without a sweep)."""
        return [lr_scaled(genome, m) for genome in genomes for m in self.settings.lr_sweep]

    def score_variants(self, evaluation: Evaluation, baselines: Sequence[Baseline]) -> list[GenomeFitness]:
        """Fitness of each genome from the evaluation of its :meth:`lr_variants`."""
        scored = score_evaluation(evaluation, baselines)
        sweep = tuple(self.settings.lr_sweep)
        if sweep == NO_SWEEP:
            return scored
        return [combine_lr_sweep(dict(zip(sweep, scored[i:i + len(sweep)])), self.settings.lr_aggregate)
                for i in range(0, len(scored), len(sweep))]

    def score_with_halving(self, genomes: Sequence[Genome]) -> list[RungOutcome]:
        """Successive halving over the settings' rungs; each outcome's ``score`` is a GenomeFitness."""
        s = self.settings
        if self.pipeline is not None:
            try:
                return self.pipeline.run(genomes)
            finally:
                self._rung = (None, 1)
        rungs = iter(range(s.rungs))

        def score_rung(candidates: list[Genome], budget: int) -> list[GenomeFitness]:
            self._rung = (next(rungs), s.rungs)
            return self.score(candidates, budget)

        try:
            return successive_halving(genomes, score_rung, key=lambda f: f.fitness, budget=s.budget, eta=s.eta,
                                      rungs=s.rungs)
        finally:
            self._rung = (None, 1)

    def drain(self) -> None:
        """Wait for speculative units still in flight and drop their results (before the backend serves
        anything else, or closes)."""
        if self.pipeline is not None:
            self.pipeline.drain()
