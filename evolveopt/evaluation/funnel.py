"""Funnel selection: candidates climb stages of task *scale* before they enter the hall of fame.

Successive halving (halving.py) climbs rungs of steps on the search tasks; the funnel climbs
stages of larger tasks (wider, deeper, longer, more data), after Lion's search (Chen et al.
2023), whose proxy-to-target gap closed when the best programs were re-checked on progressively
larger tasks. With stages S_1..S_J (``fitness.funnel``), each a task list, a budget and a count
``top_j`` (non-increasing):

    entrants_1 = the top_1 candidates by search fitness
    entrants_j = the top_j of entrants_{j−1} by their fitness on S_{j−1}

Each stage scores its entrants exactly as the search fitness does (same objective, seeds, lr
sweep, cache, backend), against Adam tuned on that stage's tasks and budget. A candidate's funnel
result is its list of stage fitnesses; the hall of fame ranks by

    (halving rung reached, stages climbed, fitness on the last stage climbed, else search fitness)

(:func:`evolveopt.search.individual.fame_key`), so a genome that climbed further outranks one that did not, and among those that climbed equally
far the larger task decides. Selection for breeding still reads the search fitness only: the
funnel costs its stages' training once per generation (or epoch), not once per child.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from evolveopt.evaluation.cache import ResultCache
from evolveopt.evaluation.evaluator import MapUnits, OnProgress
from evolveopt.evaluation.fitness import GenomeFitness
from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings, ScorerStats
from evolveopt.genome.schema import Genome


@dataclass(frozen=True)
class FunnelStage:
    """One stage: its tasks, its budget (None: the search budget) and how many candidates enter it."""

    tasks: tuple[dict[str, Any], ...]
    top: int
    budget: int | None = None

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> "FunnelStage":
        return cls(tuple(dict(t) for t in data["tasks"]), int(data["top"]), data.get("budget"))


class Funnel:
    """Scores candidates stage by stage (module docstring), each stage a :class:`FitnessScorer` of its
    own tasks and budget (one successive-halving rung) sharing the search's cache, backend and stats."""

    def __init__(self, stages: Sequence[FunnelStage], settings: FitnessSettings, cache: ResultCache,
                 map_units: MapUnits | None = None, on_progress: OnProgress | None = None,
                 stats: ScorerStats | None = None):
        self.stages = list(stages)
        self.scorers = []
        for stage in self.stages:
            scorer = FitnessScorer(replace(settings, tasks=list(stage.tasks), budget=stage.budget or settings.budget,
                                           rungs=1, speculate=False), cache, map_units, on_progress)
            if stats is not None:
                scorer.stats = stats  # the funnel's work counts in the run's member-steps, hits and nodes
            self.scorers.append(scorer)

    def climb(self, genomes: Sequence[Genome], search_fitness: Sequence[float]) -> list[list[GenomeFitness]]:
        """Each candidate's fitness on every stage it entered, in stage order ([] for one that entered
        none). Ties go to the earlier candidate."""
        climbed: list[list[GenomeFitness]] = [[] for _ in genomes]
        ranking = sorted(range(len(genomes)), key=lambda i: -search_fitness[i])  # stable: earlier first on ties
        for stage, scorer in zip(self.stages, self.scorers):
            entrants = ranking[:stage.top]
            if not entrants:
                break
            for i, score in zip(entrants, scorer.score([genomes[i] for i in entrants])):
                climbed[i].append(score)
            ranking = sorted(entrants, key=lambda i: -climbed[i][-1].fitness)
        return climbed

    def entrants(self, climbed: Sequence[Sequence[GenomeFitness]]) -> list[int]:
        """How many candidates entered each stage, from :meth:`climb`'s result."""
        return [sum(len(stages) > j for stages in climbed) for j in range(len(self.stages))]
