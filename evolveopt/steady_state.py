"""The steady-state search (``search.mode: steady_state``): regularized evolution, asynchronous.

Regularized (aging) evolution, after Real et al. 2019: the population is a queue of the last
``population`` evaluated individuals, oldest first. Whenever one evaluation's result arrives, the
child joins the queue, the oldest leaves it, and a new child is submitted: two tournaments of
``tournament`` individuals sampled from the queue (the fittest of each wins), then the operators of
the generational search (crossover, structural and gene mutation, dedupe against the queue and
the evaluations in flight). ``workers × in_flight_per_worker`` evaluations are kept in flight
(fixed when the run starts and kept on resume), so no worker waits for a generation's slowest unit.
The first children are the generational search's generation 0 (seed genomes, variants, random).

One evaluation is one genome's full fitness at the full budget, through the same cache, tuned-Adam
baselines and divergence handling as the generational mode; successive halving is left out (a rung
of one candidate always promotes it, so per-candidate halving would only add the low rungs' cost).
The rung recorded is the last one, so fitnesses compare with a generational run's full-budget ones.

Records: every ``population`` arrivals make an *epoch*, committed like a generation (population
file = the queue, which then holds exactly that epoch's arrivals; lineage lines; generation line;
hall of fame, after the epoch's best climb ``fitness.funnel``'s stages if it has one; checkpoint with
the evaluations in flight). Between checkpoints, ``arrivals.jsonl``
records each arrival as it happens (one checksummed line, fsynced, before anything depends on it).
A resumed run restores the checkpoint, replays the arrivals logged after it in their order (their
results come from the log; choices from the checkpointed numpy Generator, the only randomness here)
and so stands where the killed run stood; the evaluations then in flight are submitted again.
Islands (``search.islands`` > 1): the queue is split into sub-populations bred apart, each refilling
its own share of the in-flight slots, with the best ``migrants`` copied around a ring every
``migration_interval`` arrivals; all of them share the one backend (docs/evolution.md).
In-process (one worker) results arrive in the order they were submitted, so a run repeats exactly
from its seed; on Ray the arrival order depends on timing, and the log is what makes a resume exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import time
from typing import Any

from evolveopt.evaluation.evaluator import PlannedEvaluation, finish_evaluation, plan_evaluation
from evolveopt.evolution import Evolution, RunSummary
from evolveopt.run_directory import RunDirError, dumps, lineage_record
from evolveopt.search.algorithm import structures
from evolveopt.search.individual import Individual

ARRIVALS = "arrivals.jsonl"


class SteadyStateEvolution(Evolution):
    """Regularized evolution over a backend's ``submit`` / ``next_result``; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.size = self.config.search.population
        self.total = self.config.search.generations * self.size  # evaluations, as many as epochs × population
        self.width = self.backend.workers * self.config.search.in_flight_per_worker
        self.in_flight: list[Individual] = []  # submitted, result not in yet; submission order
        self.initial: list[Individual] | None = None  # generation 0 not yet submitted
        self.arrived = 0
        self.submitted = 0
        self._epoch: list[Individual] = []
        self._restored = False
        self._live = True  # False while replaying: children are made but not submitted
        self._planned: dict[int, tuple[PlannedEvaluation, set[int]]] = {}  # id -> (evaluation, tickets out)
        self._owner: dict[int, int] = {}  # ticket -> id
        self._started = time.monotonic()
        self._counters = self._snapshot()
        self.occupancy: list[tuple[float, int]] = []  # (time, evaluations in flight) at each arrival
        # islands (search.islands > 1): queues of the sub-populations, the generation-0 genomes each has
        # still to submit, and the island each evaluation in flight belongs to. One island: ``population``.
        search = self.config.search
        self.islands = search.islands
        self.sizes = [self.size // self.islands + (i < self.size % self.islands) for i in range(self.islands)]
        self.interval = search.migration_interval or self.size
        self.queues: list[list[Individual]] = [[] for _ in range(self.islands)]
        self.initial_islands: list[list[Individual]] | None = None
        self.home: dict[int, int] = {}  # id -> island, for every individual in flight

    # ------------------------------------------------------------------ state
    def restore(self, checkpoint: dict[str, Any]) -> None:
        super().restore(checkpoint)
        self._restored = True
        steady = checkpoint.get("steady_state")
        if steady is None:
            raise RunDirError(f"{self.rundir.path}: the checkpoint was written by a generational run; "
                              "resume it with search.mode: generational")
        self.width, self.arrived, self.submitted = steady["width"], steady["arrived"], steady["submitted"]
        self.in_flight = [Individual.from_json(d) for d in steady["in_flight"]]
        self.initial = [Individual.from_json(d) for d in steady["initial"]]
        islands = steady.get("islands")
        if (islands["count"] if islands else 1) != self.islands:
            raise RunDirError(f"{self.rundir.path}: the checkpoint holds {islands['count'] if islands else 1} "
                              f"island(s), the config search.islands={self.islands}; resume with the run's own")
        if islands:
            members = {ind.id: ind for ind in self.population}
            self.queues = [[members[i] for i in queue] for queue in islands["queues"]]
            self.initial_islands = [[Individual.from_json(d) for d in group] for group in islands["initial"]]
            self.home = {int(k): v for k, v in islands["home"].items()}

    def checkpoint_state(self) -> dict[str, Any]:
        steady: dict[str, Any] = {
            "width": self.width, "arrived": self.arrived, "submitted": self.submitted,
            "in_flight": [ind.to_json() for ind in self.in_flight],
            "initial": [ind.to_json() for ind in self.initial or []]}
        if self.islands > 1:  # the population is the islands' union; each queue by id, oldest first
            steady["islands"] = {"count": self.islands, "queues": [[ind.id for ind in q] for q in self.queues],
                                 "initial": [[ind.to_json() for ind in group] for group in self.initial_islands or []],
                                 "home": {str(k): v for k, v in self.home.items()}}
        return {**super().checkpoint_state(), "steady_state": steady}

    # ------------------------------------------------------------------ loop
    def run(self) -> RunSummary:
        try:
            self.scorer.baselines(self.config.fitness.budget)
            if self.initial is None:
                self.initial = self.search.initial_population()
            if self.islands > 1 and self.initial_islands is None:  # generation 0 dealt round robin
                self.initial_islands = [self.initial[i::self.islands] for i in range(self.islands)]
                self.initial = []
            self._replay()
            for ind in self.in_flight:
                self._submit(ind)
            while self.arrived < self.total:
                self._fill()
                ind, values, result = self._next_arrival()
                self._log_arrival(ind, values, result)
                self._arrive(ind, values, result)
        except KeyboardInterrupt:
            return RunSummary(self.rundir.path, self.generation + 1, self.best(), interrupted=True)
        finally:
            self.backend.cancel_all()
            self.backend.close()
        return RunSummary(self.rundir.path, self.generation + 1, self.best())

    def _fill(self) -> None:
        """Submit children until ``width`` are in flight (or all evaluations are submitted)."""
        if self.islands > 1:
            return self._fill_islands()
        while self.submitted < self.total and len(self.in_flight) < self.width:
            if self.initial:
                child = self.initial.pop(0)
            elif self.population:
                seen = {ind.hash for ind in self.population} | {ind.hash for ind in self.in_flight}
                child = self.search.tournament_child(self.population, self.arrived // self.size, seen)
            else:
                return  # generation 0 is all in flight: breed once something has arrived
            self.in_flight.append(child)
            self.submitted += 1
            if self._live:
                self._submit(child)

    def _shares(self) -> list[int]:
        """Evaluations in flight per island: ``width`` dealt out, at least one each."""
        k = self.islands
        return [max(1, self.width // k + (i < self.width % k)) for i in range(k)]

    def _fill_islands(self) -> None:
        """Islands in turn, one child per island and pass, each up to its share in flight: an island's
        generation-0 genomes first, then children bred from its own queue (none while it is empty)."""
        shares = self._shares()
        while self.submitted < self.total:
            flying = [0] * self.islands
            for ind in self.in_flight:
                flying[self.home[ind.id]] += 1
            submitted = self.submitted
            for island in range(self.islands):
                if self.submitted >= self.total or flying[island] >= shares[island]:
                    continue
                if self.initial_islands[island]:
                    child = self.initial_islands[island].pop(0)
                elif self.queues[island]:
                    seen = {ind.hash for q in self.queues for ind in q} | {ind.hash for ind in self.in_flight}
                    child = self.search.tournament_child(self.queues[island], self.arrived // self.size, seen)
                else:
                    continue
                self.home[child.id] = island
                self.in_flight.append(child)
                self.submitted += 1
                if self._live:
                    self._submit(child)
            if self.submitted == submitted:
                return

    def _submit(self, ind: Individual) -> None:
        s = self.scorer.settings
        planned = plan_evaluation(self.scorer.lr_variants([ind.genome]), s.tasks, s.budget, s.seeds, cache=self.scorer.cache,
                                  device=s.device, max_members=s.max_members, workers=1)
        tickets = {self.backend.submit(unit) for unit in planned.units}
        self._planned[ind.id] = (planned, tickets)
        self._owner.update({t: ind.id for t in tickets})

    def _next_arrival(self) -> tuple[Individual, tuple[float, float], dict[str, Any]]:
        """The next evaluation to finish: in-process, strictly the oldest in flight; on Ray, whichever
        completes first (one already complete, from the cache, first of all)."""
        ordered = getattr(self.backend, "ordered", False)
        while True:
            candidates = self.in_flight[:1] if ordered else self.in_flight
            ready = next((ind for ind in candidates if not self._planned[ind.id][1]), None)
            if ready is not None:
                return (ready, *self._score(ready))
            ticket, outcome = self.backend.next_result()
            owner = self._owner.pop(ticket)
            planned, tickets = self._planned[owner]
            planned.record(outcome, self.scorer.cache)
            tickets.discard(ticket)

    def _score(self, ind: Individual) -> tuple[tuple[float, float], dict[str, Any]]:
        planned, _ = self._planned.pop(ind.id)
        evaluation = finish_evaluation(planned)
        stats = self.scorer.stats
        stats.member_steps += evaluation.member_steps
        stats.cache_hits += evaluation.cache_hits
        stats.cache_misses += evaluation.cache_misses
        stats.threads.update(evaluation.threads)
        score = self.scorer.score_variants(evaluation, self.scorer.baselines(self.config.fitness.budget))[0]
        rung = self.config.fitness.rungs - 1  # the full budget: the last rung's
        result = {"rung": rung, "budget": self.config.fitness.budget, "fitness": score.fitness,
                  "task_scores": score.task_scores, "heldout": score.heldout, "failures": score.failures,
                  "fitness_by_rung": [score.fitness]}
        return (float(rung), float(score.fitness)), result

    def _arrive(self, ind: Individual, values: tuple[float, float], result: dict[str, Any]) -> None:
        """Insert the child, retire the oldest, and commit the epoch it completes."""
        self.occupancy.append((time.monotonic(), len(self.in_flight)))
        self.in_flight = [other for other in self.in_flight if other.id != ind.id]
        ind.fitness.values = tuple(values)
        ind.result = result
        ind.generation = self.arrived // self.size  # the epoch it arrived in
        if self.islands > 1:
            island = self.home.pop(ind.id)
            self._join(island, ind)
        else:
            self.population.append(ind)
            if len(self.population) > self.size:
                self.population.pop(0)
        self._epoch.append(ind)
        self.arrived += 1
        if self.islands > 1:
            if self.arrived % self.interval == 0:
                self._migrate()
            self.population = self._union()
        if self.progress and self._live:  # a terminal's status line; nothing on a log
            self.progress.phase(f"epoch {self.arrived // self.size + 1}: {len(self._epoch)}/{self.size} arrived, "
                                f"{len(self.in_flight)} in flight")
        if self.arrived % self.size == 0:
            self._commit_epoch(self.arrived // self.size - 1)

    def _join(self, island: int, ind: Individual) -> None:
        """``ind`` joins ``island``'s queue as its newest member; the oldest leaves beyond its size."""
        queue = self.queues[island]
        queue.append(ind)
        if len(queue) > self.sizes[island]:
            queue.pop(0)

    def _migrate(self) -> None:
        """Each island's ``migrants`` fittest (the older first among equals) are copied to the next island
        in the ring, as its newest members, replacing its oldest; a genome the island holds already stays."""
        moving = [sorted(queue, key=lambda ind: ind.fitness, reverse=True)[: self.config.search.migrants]
                  for queue in self.queues]
        for island, group in enumerate(moving):
            target = (island + 1) % self.islands
            for ind in group:
                if all(other.hash != ind.hash for other in self.queues[target]):
                    self._join(target, ind)

    def _union(self) -> list[Individual]:
        """The islands' members, island by island, oldest first, each individual once."""
        seen: set[int] = set()
        union = []
        for queue in self.queues:
            for ind in queue:
                if ind.id not in seen:
                    seen.add(ind.id)
                    union.append(ind)
        return union

    def _commit_epoch(self, epoch: int) -> None:
        funnel = self._climb_funnel(self._epoch)
        self.hof.update(self._epoch)
        steps, hits, misses = self._counters
        stats = self.scorer.stats
        record = {
            "generation": epoch, **self.stats.compile(self.population),
            "best": self._best_full_fitness(), "best_id": self.hof[0].id if len(self.hof) else None,
            "diversity": structures(self.population), "evaluations": len(self._epoch),
            "member_steps": stats.member_steps - steps, "cache_hits": stats.cache_hits - hits,
            "cache_misses": stats.cache_misses - misses, "wall_time": time.monotonic() - self._started,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "threads": sorted(stats.threads), "in_flight": self.width, **funnel,
        }
        self.logbook.record(**record)
        self.generation = epoch
        new, self._epoch = self._epoch, []
        self._commit(epoch, list(self.population), new, record)
        stats.threads.clear()
        self._started, self._counters = time.monotonic(), self._snapshot()
        if self.progress and self._live:
            self.progress.generation(record)

    def _snapshot(self) -> tuple[int, int, int]:
        stats = self.scorer.stats
        return stats.member_steps, stats.cache_hits, stats.cache_misses

    # ------------------------------------------------------------------ the arrival log
    def _log_arrival(self, ind: Individual, values: tuple[float, float], result: dict[str, Any]) -> None:
        body = {"n": self.arrived, "width": self.width, "id": ind.id, "hash": ind.hash, "fitness": list(values), "result": result}
        line = dumps({**body, "sha256": _digest(body)}) + "\n"
        with open(self.rundir.file(ARRIVALS), "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _replay(self) -> None:
        """Apply the arrivals logged after the checkpoint, in their order; cut a torn last line."""
        path = self.rundir.file(ARRIVALS)
        if not path.exists():
            return
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a last line without its newline was torn by a kill: dropped
        keep = 0
        self._live = False
        try:
            for number, raw in enumerate(complete.splitlines(keepends=True), start=1):
                entry = _entry(raw)
                if entry is None:
                    raise RunDirError(f"{path}: line {number} is damaged (not valid JSON or checksum mismatch)")
                keep += len(raw)
                if number == 1 and not self._restored:
                    self.width = entry["width"]  # died before its first checkpoint: the width it started with
                if entry["n"] < self.arrived:
                    continue  # before the checkpoint
                if entry["n"] != self.arrived:
                    raise RunDirError(f"{path}: line {number} is arrival {entry['n']} where {self.arrived} comes next")
                self._fill()
                ind = next((i for i in self.in_flight if i.id == entry["id"] and i.hash == entry["hash"]), None)
                if ind is None:
                    raise RunDirError(f"{path}: line {number}: individual #{entry['id']} is not in flight in this "
                                      "run's state (the log belongs to another run or config)")
                self._arrive(ind, tuple(entry["fitness"]), entry["result"])
            self._fill()
        finally:
            self._live = True
        if keep < len(data):
            with open(path, "r+b") as f:
                f.truncate(keep)


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(body).encode()).hexdigest()


def _entry(raw: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "sha256" not in data:
        return None
    digest = data.pop("sha256")
    return data if digest == _digest(data) else None
