"""The generational GA over genomes, built from DEAP's tools.

Each generation: the ``elites`` best individuals carry over unchanged; every other child comes
from two parents drawn by DEAP tournament selection (``tools.selTournament``): crossover with
probability ``crossover_rate`` (else a copy of the first), then a structural mutation with
probability ``mutation_rate`` and a gene mutation with probability ``gene_mutation_rate``.
A child equal (by canonical hash) to one already in the generation is mutated again, so no
evaluation is spent twice. Generation 0 holds the seed genomes (named genomes, canonical)
and random genomes up to the population size.

The loop around it (evaluation, records, checkpoints) lives in ``evolveopt.evolution``; this module
only turns one population into the next and imports no torch. Randomness comes from the
numpy Generator passed in and, for DEAP's selection (which calls the ``random`` module), from a
Python ``random`` state of the search's own that is swapped in around each DEAP call: other
libraries that touch ``random`` (some draw at import time) cannot shift the run's choices, and
the run checkpoints both states.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from evolveopt.genome.canonical import canonical_form, genome_hash
from evolveopt.genome.io import load_genome
from evolveopt.genome.schema import to_dict
from evolveopt.search.individual import Individual
from evolveopt.search.operators import crossover, mutate_genes, mutate_structure
from evolveopt.search.space import SearchSpace, random_genome, with_drawn_genes
from evolveopt.extras import optional

tools = optional("deap.tools", "search")


@dataclass(frozen=True)
class GAConfig:
    population: int = 24
    generations: int = 10
    elites: int = 2
    tournament: int = 3
    crossover_rate: float = 0.5
    mutation_rate: float = 0.7
    gene_mutation_rate: float = 0.8
    gene_probability: float = 0.3
    gene_sigma: float = 0.3
    seed_genomes: tuple[str, ...] = ("adam", "adamw", "nadam", "lion", "adan", "adabelief", "radam", "momentum")
    seed_variants: int = 1  # per seed genome: copies with every gene redrawn (structure kept)
    hall_of_fame: int = 10
    dedupe_tries: int = 10
    mode: str = "generational"  # generational | steady_state (evolveopt/steady_state.py)
    in_flight_per_worker: int = 2  # steady_state: evaluations kept in flight per backend worker (k)
    islands: int = 1  # steady_state: sub-populations, each breeding its own children (1: one queue)
    migration_interval: int = 0  # steady_state islands: arrivals between migrations (0: once per epoch)
    migrants: int = 1  # steady_state islands: best individuals copied to the next island at each migration


class GeneticSearch:
    """Breeds populations of :class:`Individual` s; ``next_id`` numbers every new individual."""

    def __init__(self, config: GAConfig, space: SearchSpace, rng: np.random.Generator, next_id: int = 0):
        self.config, self.space, self.rng, self.next_id = config, space, rng, next_id
        self.python_random = random.Random(int(rng.integers(2**63))).getstate()

    @contextmanager
    def _deap_random(self) -> Iterator[None]:
        """Run DEAP code on this search's own ``random`` state, leaving the global one as it was."""
        outside = random.getstate()
        random.setstate(self.python_random)
        try:
            yield
        finally:
            self.python_random = random.getstate()
            random.setstate(outside)

    def _new(self, genome, generation: int, parents: tuple[int, ...] = (), operators: tuple[str, ...] = (),
             details: dict[str, Any] | None = None) -> Individual:
        individual = Individual(self.next_id, canonical_form(genome), generation, parents, operators, details or {})
        self.next_id += 1
        return individual

    def initial_population(self) -> list[Individual]:
        """Seed genomes, then their variants with fresh genes, then random genomes; no two equal."""
        population: list[Individual] = []
        seen: set[str] = set()

        def add(genome, operators: tuple[str, ...], details: dict[str, Any]) -> None:
            genome = canonical_form(genome)
            if not self.space.allows(genome):
                return  # a seed above the space's memory cap
            if len(population) < self.config.population and genome_hash(genome) not in seen:
                seen.add(genome_hash(genome))
                population.append(self._new(genome, 0, operators=operators, details=details))

        seeds = [(name, load_genome(name)) for name in self.config.seed_genomes]
        for name, genome in seeds:
            add(genome, ("seed",), {"seed": name})
        for _ in range(self.config.seed_variants):
            for name, genome in seeds:
                add(with_drawn_genes(self.rng, to_dict(replace(genome, name="", description="")), self.space),
                    ("seed_variant",), {"seed": name})
        while len(population) < self.config.population:
            add(random_genome(self.rng, self.space), ("random",), {})
        return population

    def next_generation(self, population: Sequence[Individual], generation: int) -> list[Individual]:
        """Elites, then offspring of tournament-selected parents, all distinct."""
        ranked = sorted(population, key=lambda ind: ind.fitness, reverse=True)
        elites = list(ranked[: self.config.elites])
        seen = {ind.hash for ind in elites}
        offspring = []
        while len(elites) + len(offspring) < self.config.population:
            child = self._offspring(population, generation, seen)
            seen.add(child.hash)
            offspring.append(child)
        return elites + offspring

    def _offspring(self, population: Sequence[Individual], generation: int, seen: set[str]) -> Individual:
        with self._deap_random():
            first, second = tools.selTournament(list(population), 2, tournsize=self.config.tournament)
        return self._breed(first, second, generation, seen)

    def tournament_child(self, population: Sequence[Individual], generation: int, seen: set[str]) -> Individual:
        """One child for the steady-state search: two tournaments (``tournament`` individuals sampled
        without replacement from the numpy Generator, the fittest wins), then the operators of
        :meth:`next_generation`. Draws only from the numpy Generator."""
        first, second = (self._tournament(population) for _ in range(2))
        return self._breed(first, second, generation, seen)

    def _tournament(self, population: Sequence[Individual]) -> Individual:
        size = min(self.config.tournament, len(population))
        picks = self.rng.choice(len(population), size=size, replace=False)
        return max((population[int(i)] for i in sorted(picks)), key=lambda ind: ind.fitness)

    def _breed(self, first: Individual, second: Individual, generation: int, seen: set[str]) -> Individual:
        cfg, rng, space = self.config, self.rng, self.space
        operators, details = [], {}
        if rng.random() < cfg.crossover_rate:
            genome, details["crossover"] = crossover(rng, first.genome, second.genome, space)
            parents = (first.id, second.id)
            operators.append("crossover")
        else:
            genome, parents = first.genome, (first.id,)
        if rng.random() < cfg.mutation_rate:
            genome, change = mutate_structure(rng, genome, space)
            operators.append(f"mutate:{change['mutation']}")
            details["mutation"] = change
        if rng.random() < cfg.gene_mutation_rate or not operators:
            genome = self._mutate_genes(genome, operators, details)
        for _ in range(cfg.dedupe_tries):
            if genome_hash(genome) not in seen:
                break
            genome = self._mutate_genes(genome, operators, details)
        return self._new(genome, generation, parents, tuple(operators), details)


    def _mutate_genes(self, genome, operators: list[str], details: dict[str, Any]):
        genome, change = mutate_genes(self.rng, genome, self.space, self.config.gene_probability,
                                      self.config.gene_sigma)
        operators.append("mutate:genes")
        details.setdefault("genes", []).extend(change["genes"])
        return genome


def structures(population: Sequence[Individual]) -> int:
    """Diversity: distinct structure keys in a population."""
    return len({ind.structure for ind in population})


class RankedHallOfFame(tools.HallOfFame):
    """DEAP's hall of fame ordered by ``Individual.fame`` (rung, funnel stages climbed, fitness there)
    instead of the search fitness; without a funnel the two orders are the same. DEAP's class sorts
    by ``.fitness`` alone, so its ``update`` and ``insert`` are given the key here."""

    def update(self, population: Sequence[Individual]) -> None:
        for ind in population:
            if len(self) >= self.maxsize and not ind.fame > self.keys[0]:
                continue
            if any(self.similar(ind, member) for member in self):
                continue
            if len(self) >= self.maxsize:
                self.remove(-1)
            self.insert(ind)

    def insert(self, item: Individual) -> None:
        item = deepcopy(item)
        i = bisect_right(self.keys, item.fame)
        self.items.insert(len(self) - i, item)
        self.keys.insert(i, item.fame)


def hall_of_fame(size: int) -> RankedHallOfFame:
    """The run's best distinct genomes (unique by canonical genome hash), best first."""
    return RankedHallOfFame(size, similar=lambda a, b: a.hash == b.hash)


def statistics() -> tools.Statistics:
    """DEAP statistics over the fitness at the rung each individual reached."""
    stats = tools.Statistics(key=lambda ind: ind.score)
    stats.register("max", np.max)
    stats.register("median", np.median)
    stats.register("min", np.min)
    return stats
