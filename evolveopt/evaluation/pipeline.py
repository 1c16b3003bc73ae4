"""Successive halving on a backend that takes units one at a time, with speculative promotion.

Successive halving (``halving.py``) promotes the best ⌈n/η⌉ of a rung by *fitness*, the mean of
the task scores, so a rung's promotions are known only once every task's units of that rung are
in: nothing of rung r+1 is certain before rung r has ended (a task score is bounded only far
from where scores lie, so no genome is in or out early). Waiting for that barrier leaves workers
idle at the end of every rung. The pipeline fills them:

* rung r's units are submitted at once, longest first (``plan_units``), as ``map_units`` would;
* while fewer units are in flight than the backend has workers, the next-rung units of the genome
  most likely to be promoted go out *speculatively*: candidates ranked by an estimate of their
  rung-r fitness (the mean over tasks of the rung-r task score where all its seeds are in, else
  the rung r−1 score), among the ⌈n/η⌉ best not yet speculated (all of them when every candidate
  is promoted anyway);
* once rung r is complete its promotions are decided as ``successive_halving`` decides them
  (``halving.promote``); rung r+1 is planned like any evaluation (the same cache look-ups); a
  member whose result a speculative unit holds, or will bring, is taken from it, not trained again;
* a speculative result of a genome that is not promoted is dropped: it never reaches the cache,
  the scores or the records (``ScorerStats.speculative_steps`` counts it as work done).

A member's result does not depend on the unit it trains in (``runner.py``), so results, promotions
and fitness are those of rungs run one after another, bit for bit; only time and wasted work differ.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from evolveopt.evaluation.cache import result_key
from evolveopt.evaluation.evaluator import (PlannedEvaluation, UnitResult, WorkUnit, _UnitCounter,
                                            finish_evaluation, plan_evaluation, plan_units)
from evolveopt.evaluation.fitness import aggregate_lr_scores, score_against
from evolveopt.evaluation.halving import RungOutcome, promote, promoted_count, record_rung, rung_budgets
from evolveopt.genome import genome_hash
from evolveopt.genome.schema import Genome

if TYPE_CHECKING:
    from evolveopt.evaluation.scorer import FitnessScorer


@dataclass(frozen=True)
class Flying:
    """A submitted unit: the halving call (``round``) and rung it is for, and whether it was a guess."""

    unit: WorkUnit
    round: int
    rung: int
    speculative: bool


@dataclass
class _Rung:
    """One rung under way: its planned evaluation and what is speculated for the rung after it."""

    number: int
    alive: list[int]
    planned: PlannedEvaluation
    wanted: set[str]  # every member key of the rung (cached or not)
    waiting: dict[int, set[str]]  # planned unit -> its keys still missing (progress events)
    unit_of: dict[str, list[int]]
    counter: _UnitCounter
    speculated: set[str] = field(default_factory=set)  # genome hashes whose next rung went out
    next_keys: set[str] = field(default_factory=set)  # next-rung member keys speculated
    queue: list[WorkUnit] = field(default_factory=list)  # speculative units not yet submitted
    task_scores: dict[tuple[int, int], float] = field(default_factory=dict)  # (candidate, task) complete

    @property
    def complete(self) -> bool:
        return self.wanted <= self.planned.known.keys()


class HalvingPipeline:
    """Runs :meth:`FitnessScorer.score_with_halving` over ``backend.submit`` / ``next_result``.

    Units still in flight when a call returns (speculation that turned out useless) stay known here:
    the next call drops their results as they come, and :meth:`drain` waits for them at the end."""

    def __init__(self, scorer: "FitnessScorer", backend: Any):
        self.scorer, self.backend = scorer, backend
        self.flight: dict[int, Flying] = {}
        self.round = 0
        self._tasks: list[Any] | None = None

    # ------------------------------------------------------------------ one halving call
    def run(self, genomes: Sequence[Genome]) -> list[RungOutcome]:
        s = self.scorer.settings
        self.round += 1
        budgets = rung_budgets(s.budget, s.eta, s.rungs)
        outcomes: list[RungOutcome | None] = [None] * len(genomes)
        alive = list(range(len(genomes)))
        held: list[UnitResult] = []  # speculative results for the rung after the one under way
        for number, budget in enumerate(budgets):
            self.scorer._rung = (number, s.rungs)
            baselines = self.scorer.baselines(budget)
            rung = self._start(number, alive, [genomes[i] for i in alive], budget, held)
            held = []
            while not rung.complete:
                if number < len(budgets) - 1:
                    self._speculate(rung, genomes, outcomes, budgets)
                ticket, result = self.backend.next_result()
                self._arrive(self.flight.pop(ticket), result, rung, held)
            evaluation = finish_evaluation(rung.planned)
            self.scorer.count(evaluation)
            scores = self.scorer.score_variants(evaluation, baselines)
            record_rung(outcomes, alive, scores, number, budget)
            if number < len(budgets) - 1:
                alive = promote(alive, scores, lambda f: f.fitness, s.eta)
        return outcomes  # type: ignore[return-value]

    def _start(self, number: int, alive: list[int], candidates: list[Genome], budget: int,
               held: list[UnitResult]) -> _Rung:
        """Plan the rung, take what speculation brought, submit the rest (longest first)."""
        s, cache = self.scorer.settings, self.scorer.cache
        planned = plan_evaluation(self.scorer.lr_variants(candidates), self.tasks, budget, s.seeds, cache=cache, device=s.device,
                                  max_members=s.max_members, workers=s.workers)
        wanted = {k for per_genome in planned.keys for per_task in per_genome for k in per_task}
        taken: set[str] = set()
        for result in held:
            share = result.only(wanted - planned.known.keys())
            self._take(share, planned)
            taken.update(share.keys)
        coming = {k for f in self.flight.values() if (f.round, f.rung) == (self.round, number) for k in f.unit.keys}
        unit_of: dict[str, list[int]] = {}
        for index, unit in enumerate(planned.units):
            for key in unit.keys:
                unit_of.setdefault(key, []).append(index)
        counter = _UnitCounter(planned.units, planned.specs, planned.labels, budget, self.scorer._reporter("genomes"))
        waiting = {i: set(u.keys) - planned.known.keys() for i, u in enumerate(planned.units)}
        rung = _Rung(number, alive, planned, wanted, waiting, unit_of, counter)
        for index, unit in enumerate(planned.units):
            if not waiting[index]:
                counter(index)
            todo = set(unit.keys) - taken - coming
            if todo - planned.known.keys():
                self._submit(unit if len(todo) == unit.members else unit.only(todo), number, False)
        return rung

    def _take(self, result: UnitResult, planned: PlannedEvaluation) -> None:
        """Speculative results of promoted members: recorded as if their rung had trained them."""
        if result.keys:
            planned.record(result, self.scorer.cache)
            self.scorer.stats.speculative_used_steps += result.member_steps

    def _arrive(self, flying: Flying, result: UnitResult, rung: _Rung, held: list[UnitResult]) -> None:
        if flying.speculative:
            self.scorer.stats.speculative_steps += result.member_steps
        if flying.round != self.round:
            return  # a guess of an earlier call: dropped
        if flying.rung == rung.number:
            mine = result.only(rung.wanted)  # a guess keeps its promoted members only
            if flying.speculative:
                self._take(mine, rung.planned)
            elif mine.keys:
                rung.planned.record(mine, self.scorer.cache)
            for key in mine.keys:
                for index in rung.unit_of.get(key, []):
                    missing = rung.waiting[index]
                    if key in missing:
                        missing.discard(key)
                        if not missing:
                            rung.counter(index)
        elif flying.rung == rung.number + 1:
            held.append(result)
        # a guess for a rung already over: dropped

    # ------------------------------------------------------------------ speculation
    def _speculate(self, rung: _Rung, genomes: Sequence[Genome], outcomes: list[RungOutcome | None],
                   budgets: list[int]) -> None:
        """Fill idle workers with next-rung units of the likeliest promotions."""
        while len(self.flight) < self.backend.workers:
            if not rung.queue:
                rung.queue = self._next_guess(rung, genomes, outcomes, budgets[rung.number + 1])
                if not rung.queue:
                    return
            self._submit(rung.queue.pop(0), rung.number + 1, True)

    def _next_guess(self, rung: _Rung, genomes: Sequence[Genome], outcomes: list[RungOutcome | None],
                    budget: int) -> list[WorkUnit]:
        keep = promoted_count(len(rung.alive), self.scorer.settings.eta)
        certain = keep >= len(rung.alive)
        estimates = {i: self._estimate(rung, j, outcomes) for j, i in enumerate(rung.alive)}
        ranked = sorted((i for i, e in estimates.items() if certain or e is not None),
                        key=lambda i: (-(estimates[i] or 0.0), i))
        for i in ranked[:keep]:
            digest = genome_hash(genomes[i])
            if digest in rung.speculated:
                continue
            rung.speculated.add(digest)
            units = self._units_for(genomes[i], budget, rung.next_keys)
            if units:
                return units
        return []

    def _estimate(self, rung: _Rung, position: int, outcomes: list[RungOutcome | None]) -> float | None:
        """Rung-r fitness as far as it is known: each task's rung-r score once all its seeds are in,
        else its score one rung down; None if neither is there."""
        s, planned = self.scorer.settings, rung.planned
        baselines = self.scorer.baselines(planned.budget)
        candidate = rung.alive[position]
        before = outcomes[candidate]
        variants = range(position * len(s.lr_sweep), (position + 1) * len(s.lr_sweep))  # its lr_variants
        scores = []
        for t, label in enumerate(planned.labels):
            if (candidate, t) not in rung.task_scores:
                keys = [planned.keys[v][t] for v in variants]
                if all(k in planned.known for per_variant in keys for k in per_variant):
                    by_lr = [score_against([planned.known[k] for k in per_variant], baselines[t], s.seeds, label)
                             for per_variant in keys]
                    rung.task_scores[candidate, t] = aggregate_lr_scores(by_lr, s.lr_aggregate)
            if (candidate, t) in rung.task_scores:
                scores.append(rung.task_scores[candidate, t])
            elif before is not None:
                scores.append(before.score.task_scores[label])
        return statistics.fmean(scores) if scores else None

    def _units_for(self, genome: Genome, budget: int, speculated: set[str]) -> list[WorkUnit]:
        """A genome's units at ``budget`` (its lr variants side by side, one unit per task), less members
        cached or speculated already."""
        from evolveopt.evaluation.sizing import default_max_members

        s = self.scorer.settings
        variants = self.scorer.lr_variants([genome])
        keys = [result_key(genome_hash(v), task, budget, seed) for v in variants for task in self.tasks
                for seed in s.seeds]
        skip = self.scorer.cache.stored(keys) | speculated
        speculated.update(keys)
        max_members = s.max_members or min(default_max_members(t, variants, s.device) for t in self.tasks)
        return plan_units(variants, self.tasks, budget, s.seeds, skip=skip, max_members=max_members)

    # ------------------------------------------------------------------ the backend
    @property
    def tasks(self) -> list[Any]:
        if self._tasks is None:
            from evolveopt.tasks import make_task

            self._tasks = [make_task(t) for t in self.scorer.settings.tasks]
        return self._tasks

    def _submit(self, unit: WorkUnit, rung: int, speculative: bool) -> None:
        self.flight[self.backend.submit(unit)] = Flying(unit, self.round, rung, speculative)

    def drain(self) -> None:
        """Wait for the units still in flight (guesses that turned out useless) and drop their results."""
        while self.flight:
            ticket, result = self.backend.next_result()
            if self.flight.pop(ticket).speculative:
                self.scorer.stats.speculative_steps += result.member_steps
