"""Successive halving (Jamieson & Talwalkar 2016; Li et al., Hyperband, 2018).

All candidates train at the smallest budget; the best 1/η go on to η× the budget, and so on:
with η = 3 and three rungs the budgets are B/9, B/3 and B, and the cost is about a third of
training everyone at B. Each rung trains from scratch at its own budget (schedules that depend
on ``total_steps`` stay exact, and every rung's results are cacheable by budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Generic, Sequence, TypeVar

Score = TypeVar("Score")


def rung_budgets(budget: int, eta: int = 3, rungs: int = 3) -> list[int]:
    """[B/η^(rungs−1), ..., B/η, B], each at least 1 step."""
    return [max(1, budget // eta ** (rungs - 1 - r)) for r in range(rungs)]


@dataclass
class RungOutcome(Generic[Score]):
    """Where a candidate stopped: its last rung, that rung's budget, and its score there."""

    rung: int
    budget: int
    score: Score
    scores_by_rung: list[Score]


def successive_halving(candidates: Sequence, score: Callable[[list, int], list[Score]], key: Callable[[Score], float],
                       budget: int, eta: int = 3, rungs: int = 3) -> list[RungOutcome]:
    """Score candidates rung by rung; ``score(candidates, budget)`` returns one score each, ``key``
    turns a score into a number to maximise. Returns one outcome per candidate, in order."""
    budgets = rung_budgets(budget, eta, rungs)
    outcomes: list[RungOutcome | None] = [None] * len(candidates)
    alive = list(range(len(candidates)))
    for rung, rung_budget in enumerate(budgets):
        scores = score([candidates[i] for i in alive], rung_budget)
        record_rung(outcomes, alive, scores, rung, rung_budget)
        if rung == len(budgets) - 1:
            break
        alive = promote(alive, scores, key, eta)
    return outcomes  # type: ignore[return-value]


def record_rung(outcomes: list, alive: Sequence[int], scores: Sequence, rung: int, budget: int) -> None:
    """Each of ``alive`` now stops at ``rung`` (until promoted) with its score there."""
    for i, s in zip(alive, scores):
        history = (outcomes[i].scores_by_rung if outcomes[i] else []) + [s]
        outcomes[i] = RungOutcome(rung, budget, s, history)


def promoted_count(alive: int, eta: int) -> int:
    """How many of ``alive`` candidates go on to the next rung: ⌈alive / η⌉, at least 1."""
    return max(1, math.ceil(alive / eta))


def promote(alive: Sequence[int], scores: Sequence, key: Callable, eta: int) -> list[int]:
    """The candidates (indices, in order) of ``alive`` that go on: the :func:`promoted_count` best by
    ``key(score)``, the lower index first among equals."""
    ranked = sorted(zip(alive, scores), key=lambda item: (-key(item[1]), item[0]))
    return sorted(i for i, _ in ranked[:promoted_count(len(alive), eta)])


def halving_cost(candidates: int, budget: int, eta: int = 3, rungs: int = 3) -> int:
    """Member-steps (per task and seed) successive halving spends on ``candidates``."""
    total, alive = 0, candidates
    for rung_budget in rung_budgets(budget, eta, rungs):
        total += alive * rung_budget
        alive = promoted_count(alive, eta)
    return total
