"""An individual of the GA: a genome with its identity, ancestry and fitness.

The fitness is a DEAP ``Fitness`` with two maximized values, compared lexicographically:
(the successive-halving rung the genome reached, its fitness at that rung). A genome stopped at
an early rung therefore ranks below every genome that went further. Individuals are plain
module-level classes (no ``deap.creator``), so they pickle anywhere, and they are stored as JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence


from evolveopt.genome.canonical import genome_hash, structure_key
from evolveopt.genome.schema import Genome, parse_genome, to_dict
from evolveopt.extras import optional

base = optional("deap.base", "search")


def fame_key(rung: int, search_fitness: float, funnel: Sequence[dict[str, Any]] = ()) -> tuple[int, int, float]:
    """The hall of fame's order (larger is better): (rung reached, funnel stages climbed, fitness on the
    last stage climbed, else the search fitness). ``funnel``: the stage results of evaluation/funnel.py.
    Without a funnel it orders as the fitness does."""
    return (rung, len(funnel), funnel[-1]["fitness"] if funnel else search_fitness)


class RankFitness(base.Fitness):
    """(rung reached, fitness at that rung), both maximized."""

    weights = (1.0, 1.0)


@dataclass
class Individual:
    id: int
    genome: Genome
    generation: int  # the generation it was born in
    parents: tuple[int, ...] = ()
    operators: tuple[str, ...] = ()  # e.g. ("crossover", "mutate:add_term", "mutate:genes")
    details: dict[str, Any] = field(default_factory=dict)  # operator arguments
    result: dict[str, Any] = field(default_factory=dict)  # fitness details (rung, budget, task scores, failures)
    fitness: RankFitness = field(default_factory=RankFitness)
    _hashed: tuple[Genome, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def hash(self) -> str:
        """The canonical hash of the genome, computed once per genome object (genomes are immutable; the
        steady-state search asks for the hashes of the whole queue with every child it breeds)."""
        if self._hashed is None or self._hashed[0] is not self.genome:
            self._hashed = (self.genome, genome_hash(self.genome))
        return self._hashed[1]

    @property
    def structure(self) -> str:
        return structure_key(self.genome)

    @property
    def score(self) -> float:
        """Fitness at the rung reached (−inf before evaluation)."""
        return self.fitness.values[1] if self.fitness.valid else -math.inf

    @property
    def rung(self) -> int:
        return int(self.fitness.values[0]) if self.fitness.valid else -1

    @property
    def fame(self) -> tuple[int, int, float]:
        """Its place in the hall of fame (:func:`fame_key`)."""
        return fame_key(self.rung, self.score, self.result.get("funnel", ()))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "hash": self.hash, "generation": self.generation, "parents": list(self.parents),
            "operators": list(self.operators), "details": self.details,
            "fitness": list(self.fitness.values), "result": self.result, "genome": to_dict(self.genome),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Individual":
        ind = cls(
            id=data["id"], genome=parse_genome(data["genome"], source=f"individual {data['id']}"),
            generation=data["generation"], parents=tuple(data["parents"]), operators=tuple(data["operators"]),
            details=data.get("details", {}), result=data.get("result", {}),
        )
        if data.get("fitness"):
            ind.fitness.values = tuple(data["fitness"])
        return ind
