"""``evaluate(genomes, tasks, budget, seeds)``: train every genome on every task, batched.

Genomes are put in canonical form. For each task, every (genome, seed) pair not in the cache
becomes a member of one stacked run; members are sorted by structure key so that each
structure's members sit side by side and share one update (one gene tensor per gene name),
while the forward and backward pass covers all of them at once. Runs are cut into
:class:`WorkUnit` s of at most ``max_members``. Equal genomes in one call are trained once.
Units are plain data, so a backend can ship them to other processes (``map_units``); the
default runs them here, one after another. A backend reports each unit as it finishes
(``on_done(index)``), and ``evaluate`` turns that into :class:`UnitProgress` events for whoever
shows progress: data flows out through the callback, no display code lives here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, NamedTuple, Sequence

from evolveopt.errors import EvaluationError
from evolveopt.evaluation.cache import ResultCache, result_key
from evolveopt.evaluation.results import MemberResult
from evolveopt.genome import canonical_form, genome_hash, load_genome, structure_key, to_dict
from evolveopt.genome.schema import Genome, parse_genome


@dataclass(frozen=True)
class WorkUnit:
    """One stacked run on one task: canonical genome dicts, seeds and cache keys, one per member.

    Plain data (picklable, no torch), so it can travel to a worker.
    """

    task: dict[str, Any]
    budget: int
    genomes: tuple[dict[str, Any], ...]
    seeds: tuple[int, ...]
    keys: tuple[str, ...]

    @property
    def members(self) -> int:
        return len(self.seeds)

    def parsed_genomes(self) -> list[Genome]:
        return [parse_genome(g, source="work unit") for g in self.genomes]

    def only(self, keys: set[str]) -> "WorkUnit":
        """This unit with the members of ``keys`` alone (their results are what they would be here)."""
        keep = [i for i, k in enumerate(self.keys) if k in keys]
        return replace(self, genomes=tuple(self.genomes[i] for i in keep), seeds=tuple(self.seeds[i] for i in keep),
                       keys=tuple(self.keys[i] for i in keep))


@dataclass(frozen=True)
class UnitResult:
    keys: tuple[str, ...]
    results: tuple[MemberResult, ...]
    member_steps: int
    seconds: float
    threads: int = 0  # torch's CPU threads in the worker that ran it
    node: str = ""  # the Ray node that ran it (its node ID); "" in this process
    span: tuple[float, float] = (0.0, 0.0)  # wall-clock (time.time()) start and end in the worker: occupancy

    def only(self, keys: set[str]) -> "UnitResult":
        """The results of the members of ``keys`` alone, with their share of the member-steps."""
        keep = [i for i, k in enumerate(self.keys) if k in keys]
        each = self.member_steps // max(1, len(self.keys))  # every member ran the unit's steps
        return replace(self, keys=tuple(self.keys[i] for i in keep), results=tuple(self.results[i] for i in keep),
                       member_steps=each * len(keep))


def execute_unit(unit: WorkUnit, device: str = "cpu", threads: int | None = None) -> UnitResult:
    """Run one unit in this process (what a worker calls), on ``threads`` CPU threads if given,
    else as many as :func:`~evolveopt.evaluation.threads.unit_threads` decides.

    Only numerical divergence is a result (the member is frozen and marked diverged). An
    exception is a bug or a lost resource, never a result: it propagates with its traceback,
    and nothing of the unit reaches a cache.
    """
    started = time.time()
    import torch

    from evolveopt.evaluation.runner import run_unit
    from evolveopt.evaluation.sizing import configure_host
    from evolveopt.evaluation.threads import unit_threads
    from evolveopt.tasks import make_task

    configure_host(unit_threads(threads))
    outcome = run_unit(make_task(unit.task), unit.parsed_genomes(), list(unit.seeds), unit.budget, device)
    return UnitResult(unit.keys, tuple(outcome.results), outcome.member_steps, outcome.seconds,
                      threads=torch.get_num_threads(), span=(started, time.time()))


OnDone = Callable[[int], None]  # a backend calls it with a unit's index as soon as that unit's result is in
MapUnits = Callable[..., list[UnitResult]]  # map_units(units, on_done=None) -> results in the order of units


def run_here(units: Sequence[WorkUnit], device: str = "cpu", threads: int | None = None,
             on_done: OnDone | None = None) -> list[UnitResult]:
    results = []
    for index, unit in enumerate(units):
        results.append(execute_unit(unit, device, threads))
        if on_done is not None:
            on_done(index)
    return results


class TaskUnits(NamedTuple):
    label: str
    done: int
    total: int


@dataclass(frozen=True)
class UnitProgress:
    """Where one ``evaluate`` call stands: sent once its units are planned (``finished`` None) and
    after each unit's result is in (``finished``: that unit's task label).

    ``tasks`` holds units done and planned per task, in task order (cached members need no unit).
    The scorer fills in what the call is for: ``stage`` "baseline" (Adam's learning-rate grid) or
    "genomes", and the successive-halving ``rung`` of ``rungs`` (None outside successive halving).
    """

    tasks: tuple[TaskUnits, ...]
    budget: int
    finished: str | None = None
    stage: str = "genomes"
    rung: int | None = None
    rungs: int = 1

    @property
    def done(self) -> int:
        return sum(t.done for t in self.tasks)

    @property
    def total(self) -> int:
        return sum(t.total for t in self.tasks)


OnProgress = Callable[[UnitProgress], None]


class _UnitCounter:
    """Counts finished units per task and sends a :class:`UnitProgress` for each."""

    def __init__(self, units: Sequence[WorkUnit], specs: Sequence[dict[str, Any]], labels: Sequence[str],
                 budget: int, on_progress: OnProgress | None):
        self.task_of = [specs.index(unit.task) for unit in units]
        self.labels, self.budget, self.on_progress = list(labels), budget, on_progress
        self.totals = [self.task_of.count(k) for k in range(len(labels))]
        self.done = [0] * len(labels)
        self._send(None)

    def __call__(self, index: int) -> None:
        task = self.task_of[index]
        self.done[task] += 1
        self._send(self.labels[task])

    def _send(self, finished: str | None) -> None:
        if self.on_progress is not None:
            tasks = tuple(TaskUnits(*row) for row in zip(self.labels, self.done, self.totals))
            self.on_progress(UnitProgress(tasks, self.budget, finished))


@dataclass
class Evaluation:
    """Results of one ``evaluate`` call: ``results[g][t][s]`` for genome g, task t, seed s."""

    genomes: list[Genome]
    tasks: list[dict[str, Any]]
    budget: int
    seeds: list[int]
    results: list[list[list[MemberResult]]]
    member_steps: int = 0
    seconds: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    units: int = 0
    task_labels: list[str] = field(default_factory=list)
    threads: tuple[int, ...] = ()  # the CPU thread counts its units ran with (results never depend on them)
    nodes: tuple[str, ...] = ()  # the Ray nodes its units ran on (none in this process)

    @property
    def hit_rate(self) -> float:
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else 0.0



def plan_units(genomes: Sequence[Genome], tasks: Sequence[Any], budget: int, seeds: Sequence[int],
               skip: set[str], max_members: int, workers: int = 1) -> list[WorkUnit]:
    """Per task (a spec or a Task), every (genome, seed) member sorted by structure, cut into equal units of
    at most ``max_members``, and into at least ⌈workers / tasks⌉ units of two or more members each, so that
    ``workers`` workers all have a unit; units whose members are all in ``skip`` are dropped. The units come
    longest first (:func:`unit_cost`): a backend starts them in this order.

    A member's result does not depend on its unit (``runner.py``), so the grain changes nothing but speed.

    Units are cut before cached members are left out, so the units of a call are the same however
    much was cached before (a member's result does not depend on its unit anyway: ``runner.py``).
    """
    from evolveopt.evaluation.sizing import param_count
    from evolveopt.tasks import make_task

    unique: dict[str, Genome] = {}
    for genome in genomes:
        unique.setdefault(genome_hash(genome), canonical_form(genome))
    ordered = sorted(unique.items(), key=lambda item: (structure_key(item[1]), item[0]))
    units, costs = [], []
    for task in tasks:
        built = make_task(task)
        params = param_count(built)
        members = [(to_dict(g), s, result_key(h, built, budget, s)) for h, g in ordered for s in seeds]
        count = unit_count(len(members), max_members, -(-workers // len(tasks)))
        bounds = [len(members) * i // count for i in range(count + 1)]  # sizes differ by at most one
        for start, end in zip(bounds, bounds[1:]):
            chunk = members[start:end]
            if all(key in skip for _, _, key in chunk):
                continue
            units.append(WorkUnit(task=built.spec, budget=budget, genomes=tuple(g for g, _, _ in chunk),
                                  seeds=tuple(s for _, s, _ in chunk), keys=tuple(k for _, _, k in chunk)))
            costs.append(unit_cost(len(chunk), budget, params))
    order = sorted(range(len(units)), key=lambda i: -costs[i])  # longest first; stable among equals
    return [units[i] for i in order]


def unit_cost(members: int, budget: int, params: int) -> int:
    """A unit's estimated cost: member-steps × the task's model size (``params``, trainable parameters
    per member). Units are handed out longest first (LPT), so the slowest ones do not start last."""
    return members * budget * max(1, params)


def unit_count(members: int, max_members: int, units: int) -> int:
    """How many units ``members`` members are cut into: none larger than ``max_members``, ``units`` if
    each still gets two members or more (a one-member unit trains beside a twin, ``runner.py``:
    twice the work)."""
    return max(1, -(-members // max_members), min(units, members // 2))


@dataclass
class PlannedEvaluation:
    """An ``evaluate`` call cut in two (:func:`plan_evaluation`, then :func:`finish_evaluation` once every
    unit's result is in): what the steady-state search keeps in flight, many at a time."""

    genomes: list[Genome]
    specs: list[dict[str, Any]]
    labels: list[str]
    budget: int
    seeds: list[int]
    keys: list[list[list[str]]]
    known: dict[str, MemberResult]
    units: list[WorkUnit]
    started: float
    cache_hits: int
    cache_misses: int
    member_steps: int = 0
    threads: set[int] = field(default_factory=set)
    nodes: set[str] = field(default_factory=set)

    def record(self, outcome: UnitResult, cache: ResultCache) -> None:
        """One unit's result: into the cache and this evaluation."""
        fresh = dict(zip(outcome.keys, outcome.results))
        cache.put_many(fresh)
        self.known.update(fresh)
        self.member_steps += outcome.member_steps
        self.threads.add(outcome.threads)
        if outcome.node:
            self.nodes.add(outcome.node)


def plan_evaluation(genomes: Sequence[Genome | str], tasks: Sequence[Any], budget: int, seeds: Sequence[int], *,
                    cache: ResultCache, device: str = "cpu", max_members: int | None = None,
                    workers: int = 1) -> PlannedEvaluation:
    """Cache look-up and units of an evaluation (:func:`evaluate` without running anything)."""
    from evolveopt.tasks import make_task

    genomes = [load_genome(g) for g in genomes]
    built = [make_task(t) for t in tasks]
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise EvaluationError(f"budget must be a positive number of steps, got {budget!r}")
    if not seeds:
        raise EvaluationError("at least one seed is needed")
    start = time.perf_counter()
    hashes = [genome_hash(g) for g in genomes]  # once per genome: a hash puts the genome in canonical form
    keys = [[[result_key(h, t, budget, s) for s in seeds] for t in built] for h in hashes]
    wanted = {k for per_genome in keys for per_task in per_genome for k in per_task}
    hits_before, misses_before = cache.hits, cache.misses
    known = cache.get_many(wanted)
    if max_members is None:
        from evolveopt.evaluation.sizing import default_max_members

        max_members = min(default_max_members(t, genomes, device) for t in built) if built else 1
    units = plan_units(genomes, built, budget, seeds, skip=set(known), max_members=max_members, workers=workers)
    return PlannedEvaluation(genomes, [t.spec for t in built], [t.label for t in built], budget, list(seeds), keys,
                             known, units, start, cache.hits - hits_before, cache.misses - misses_before)


def finish_evaluation(planned: PlannedEvaluation) -> Evaluation:
    """The :class:`Evaluation` of a planned one whose units' results are all recorded."""
    results = [[[planned.known[k] for k in per_task] for per_task in per_genome] for per_genome in planned.keys]
    return Evaluation(
        genomes=planned.genomes, tasks=planned.specs, budget=planned.budget, seeds=planned.seeds, results=results,
        member_steps=planned.member_steps, seconds=time.perf_counter() - planned.started,
        cache_hits=planned.cache_hits, cache_misses=planned.cache_misses,
        units=len(planned.units), task_labels=planned.labels, threads=tuple(sorted(planned.threads)),
        nodes=tuple(sorted(planned.nodes)),
    )


def evaluate(genomes: Sequence[Genome | str], tasks: Sequence[Any], budget: int, seeds: Sequence[int], *,
             cache: ResultCache | None = None, device: str = "cpu", max_members: int | None = None,
             map_units: MapUnits | None = None, on_progress: OnProgress | None = None,
             workers: int = 1) -> Evaluation:
    """Train each genome on each task for ``budget`` steps from each seed; see the module docstring.
    ``on_progress`` receives a :class:`UnitProgress` after planning and after every finished unit;
    ``workers``: the backend's parallel workers, which the units are cut to keep busy (:func:`plan_units`)."""
    cache = cache if cache is not None else ResultCache()
    planned = plan_evaluation(genomes, tasks, budget, seeds, cache=cache, device=device, max_members=max_members,
                              workers=workers)
    units = planned.units
    run = map_units or (lambda us, on_done: run_here(us, device, on_done=on_done))
    for outcome in run(units, on_done=_UnitCounter(units, planned.specs, planned.labels, budget, on_progress)):
        planned.record(outcome, cache)
    return finish_evaluation(planned)
