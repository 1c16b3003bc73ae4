"""An evolution run: the one module that wires search, evaluation, backends and the run directory.

    config ─► GeneticSearch (DEAP) ─► FitnessScorer (successive halving, cache) ─► backend
                    ▲                                                                  │
                    └──────── fitness ◄────────────────────────────────────────────────┘
                                  │
                                  ▼
                 run directory: generations, population, lineage, checkpoints

Each generation is evaluated, recorded and checkpointed before the next begins. Everything that
draws random numbers draws from the run's numpy Generator or from Python's ``random`` (DEAP's
selection, on a state of the search's own), both seeded from the config and saved in every
checkpoint, so a resumed run makes the same choices as one that never stopped.
"""

from __future__ import annotations

import base64
import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from evolveopt.backends import LocalBackend, RayBackend, check_resources, make_backend
from evolveopt.config import RunConfig, backend_flags, load_config, parse_config, to_plain
from evolveopt.evaluation.cache import ResultCache
from evolveopt.evaluation.funnel import Funnel, FunnelStage
from evolveopt.evaluation.scorer import FitnessScorer, FitnessSettings
from evolveopt.evaluation.threads import OPENMP_ENV, THREADS_ENV, affinity
from evolveopt.finished_runs import RunCheck, verify_run
from evolveopt.progress import Progress
from evolveopt.run_directory import RunDir, RunDirError, default_folder, lineage_record
from evolveopt.search.algorithm import GeneticSearch, hall_of_fame, statistics, structures
from evolveopt.search.individual import Individual
from evolveopt.extras import optional

tools = optional("deap.tools", "search")


@dataclass
class RunSummary:
    path: Path
    generations: int
    best: Individual | None
    interrupted: bool = False


class Evolution:
    """Runs generations of one run directory, from scratch or from its checkpoint."""

    def __init__(self, config: RunConfig, rundir: RunDir, progress: Progress | None = None,
                 backend: LocalBackend | RayBackend | None = None):
        self.config, self.rundir = config, rundir
        self.progress = progress
        self.backend = backend or make_backend(config.backend, config.device)
        fit = config.fitness
        settings = FitnessSettings(tasks=list(fit.tasks), budget=fit.budget, seeds=list(fit.seeds), eta=fit.eta,
                                   rungs=fit.rungs, max_members=fit.max_members, device=config.device,
                                   workers=self.backend.workers, objective=fit.objective,
                                   speculate=config.backend.speculate,
                                   lr_sweep=fit.lr_sweep, lr_aggregate=fit.lr_aggregate)
        self.scorer = FitnessScorer(settings, ResultCache(rundir.file("cache.sqlite")), self.backend.map_units,
                                    on_progress=progress.units if progress else None, backend=self.backend)
        self.funnel = Funnel([FunnelStage.from_config(stage) for stage in fit.funnel], settings, self.scorer.cache,
                             self.backend.map_units, on_progress=progress.units if progress else None,
                             stats=self.scorer.stats) if fit.funnel else None
        self.rng = np.random.default_rng(config.seed)
        _seed_torch(config.seed)
        self.search = GeneticSearch(config.search, config.space, self.rng)
        self.hof = hall_of_fame(config.search.hall_of_fame)
        self.logbook = tools.Logbook()
        self.stats = statistics()
        self.population: list[Individual] = []
        self.generation = -1  # the last completed generation

    # ------------------------------------------------------------------ state
    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.generation = checkpoint["generation"]
        self.search.next_id = checkpoint["next_id"]
        self.population = [Individual.from_json(d) for d in checkpoint["population"]]
        for data in checkpoint["hall_of_fame"]:
            self.hof.insert(Individual.from_json(data))
        for row in checkpoint["logbook"]:
            self.logbook.record(**row)
        rng = checkpoint["rng"]
        self.rng.bit_generator.state = rng["numpy"]
        version, internal, gauss = rng["python"]
        self.search.python_random = (version, tuple(internal), gauss)
        _set_torch_state(rng["torch"])

    def checkpoint_state(self) -> dict[str, Any]:
        version, internal, gauss = self.search.python_random
        return {
            "generation": self.generation, "next_id": self.search.next_id,
            "population": [ind.to_json() for ind in self.population],
            "hall_of_fame": [ind.to_json() for ind in self.hof],
            "logbook": list(self.logbook),
            "rng": {"numpy": self.rng.bit_generator.state, "python": [version, list(internal), gauss],
                    "torch": _torch_state()},
        }

    # ------------------------------------------------------------------ loop
    def run(self) -> RunSummary:
        total = self.config.search.generations
        try:
            for generation in range(self.generation + 1, total):
                self._run_generation(generation)
            self.scorer.drain()
        except KeyboardInterrupt:
            return RunSummary(self.rundir.path, self.generation + 1, self.best(), interrupted=True)
        finally:
            self.backend.close()
            self.scorer.cache.close()  # checkpoints its write-ahead log: the run folder is final once run() returns
        return RunSummary(self.rundir.path, self.generation + 1, self.best())

    def _run_generation(self, generation: int) -> None:
        started = time.monotonic()
        steps, hits, misses = (self.scorer.stats.member_steps, self.scorer.stats.cache_hits,
                               self.scorer.stats.cache_misses)
        self.scorer.stats.threads.clear()
        self.scorer.stats.nodes.clear()
        if generation == 0:
            population = self.search.initial_population()
        else:
            population = self.search.next_generation(self.population, generation)
        new = [ind for ind in population if not ind.fitness.valid]
        if self.progress:
            self.progress.phase(f"generation {generation + 1}: {len(new)} new genomes")
        self._evaluate(new)
        funnel = self._climb_funnel(new)
        self.hof.update(population)
        record = {
            "generation": generation, **self.stats.compile(population),
            "best": self._best_full_fitness(), "best_id": self.hof[0].id if len(self.hof) else None,
            "diversity": structures(population), "evaluations": len(new),
            "member_steps": self.scorer.stats.member_steps - steps,
            "cache_hits": self.scorer.stats.cache_hits - hits, "cache_misses": self.scorer.stats.cache_misses - misses,
            "wall_time": time.monotonic() - started,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # this process; Linux: KiB
            "threads": sorted(self.scorer.stats.threads),  # CPU threads per unit (evaluation/threads.py)
            "nodes": sorted(self.scorer.stats.nodes),  # Ray node IDs that ran its units (none in-process)
            **funnel,
        }
        self.logbook.record(**record)  # the whole line: generations.jsonl can be rebuilt from a checkpoint
        self.population, self.generation = population, generation
        self._commit(generation, population, new, record)
        if self.progress:
            self.progress.generation(record)

    def _evaluate(self, individuals: list[Individual]) -> None:
        if not individuals:
            return
        outcomes = self.scorer.score_with_halving([ind.genome for ind in individuals])
        for ind, outcome in zip(individuals, outcomes):
            score = outcome.score
            ind.fitness.values = (float(outcome.rung), float(score.fitness))
            ind.result = {
                "rung": outcome.rung, "budget": outcome.budget, "fitness": score.fitness,
                "task_scores": score.task_scores, "heldout": score.heldout, "failures": score.failures,
                "fitness_by_rung": [s.fitness for s in outcome.scores_by_rung],
            }

    def _climb_funnel(self, new: list[Individual]) -> dict[str, Any]:
        """Funnel selection (evaluation/funnel.py) of the new individuals that reached the last rung: each
        entrant's stage results go into its ``result["funnel"]``, which orders the hall of fame. Returns
        the record's fields: entrants per stage (nothing without a funnel)."""
        if self.funnel is None:
            return {}
        last = self.config.fitness.rungs - 1
        candidates = [ind for ind in new if ind.rung == last]
        if self.progress and candidates:
            self.progress.phase(f"funnel: {min(len(candidates), self.funnel.stages[0].top)} genomes on larger tasks")
        climbed = self.funnel.climb([ind.genome for ind in candidates], [ind.score for ind in candidates])
        for ind, stages in zip(candidates, climbed):
            if stages:
                ind.result["funnel"] = [{"stage": j, "budget": scorer.settings.budget, **score.to_json()}
                                        for j, (scorer, score) in enumerate(zip(self.funnel.scorers, stages))]
        return {"funnel_entrants": self.funnel.entrants(climbed)}

    def _best_full_fitness(self) -> float | None:
        last = self.config.fitness.rungs - 1
        full = [ind.score for ind in self.hof if ind.rung == last]
        return max(full) if full else None

    def best(self) -> Individual | None:
        return self.hof[0] if len(self.hof) else None

    def _commit(self, generation: int, population: list[Individual], new: list[Individual],
                record: dict[str, Any]) -> None:
        rd = self.rundir
        rd.write_json(f"population/gen_{generation:04d}.json",
                      {"generation": generation, "individuals": [ind.to_json() for ind in population]})
        rd.append_lines("lineage.jsonl", [lineage_record(ind) for ind in new])
        rd.append_lines("generations.jsonl", [record])
        rd.write_json("hall_of_fame.json", [ind.to_json() for ind in self.hof])
        rd.write_checkpoint(self.checkpoint_state())


# ----------------------------------------------------------------------------- entry points


def start_run(config: RunConfig, out: str | Path, argv: list[str] | None = None,
              progress: bool | None = None) -> RunSummary:
    """Create ``out`` and run the config there. The backend comes first: a cluster that cannot be
    joined or started stops the run before ``out`` exists, so the same ``--out`` works next time."""
    check_resources(config)
    rundir = RunDir(out)
    rundir.check_new()
    backend = make_backend(config.backend, config.device)
    try:
        config_yaml = yaml.safe_dump(to_plain(config), sort_keys=False)
        rundir.create(config_yaml, manifest(config, argv))
    except BaseException:
        backend.close()
        raise
    return _execute(config, rundir, progress, backend=backend)


def resume_run(path: str | Path, progress: bool | None = None, backend: str | None = None,
               address: str | None = None, restart: bool = False) -> RunSummary:
    """Continue a run from its newest intact checkpoint, or from generation 0 if it never completed one.
    ``restart``: start over from generation 0 in the same folder, the old records moved to ``replaced-*/``."""
    rundir = RunDir(path)
    config = rundir.read_config()
    flags = backend_flags(backend, address)  # --address alone: ray; with --backend local: refused
    if flags:
        kind = "ray" if address else backend
        config = replace(config, backend=replace(config.backend, kind=kind, address=(
            address or (None if kind == "local" else config.backend.address))))
    check_resources(config)
    return _execute(config, rundir, progress, resume=not restart, restart=restart)


def _execute(config: RunConfig, rundir: RunDir, progress: bool | None, resume: bool = False,
             restart: bool = False, backend: LocalBackend | RayBackend | None = None) -> RunSummary:
    """Run ``rundir`` under its lock. A resumed run is checked (read only) before its backend starts,
    and changed (repairs, ``--restart``'s set-aside) only once the backend is up."""
    try:
        rundir.lock()  # atomic: a second process resuming the same run stops here
    except BaseException:
        if backend is not None:
            backend.close()
        raise
    try:
        check = _trusted_run(rundir, config.search.generations) if resume else None
        backend = backend or make_backend(config.backend, config.device)
        checkpoint, warnings = None, []
        if restart:
            backup = rundir.set_aside()
            warnings.append(f"starting {rundir.path} over from generation 0; its old records are in {backup}")
        if check is not None:
            warnings = [f"warning: {line}" for line in check.repair()]
            checkpoint = check.checkpoint
        done = checkpoint["generation"] + 1 if checkpoint else 0
        display = Progress(config.search.generations, done, label=config.name, live=progress)
        for warning in warnings:
            display.message(warning)
        try:
            engine: type[Evolution] = Evolution
            if config.search.mode == "steady_state":
                from evolveopt.steady_state import SteadyStateEvolution as engine
            evolution = engine(config, rundir, display, backend)
            if checkpoint:
                rundir.truncate_logs(checkpoint["files"])
                evolution.restore(checkpoint)
            else:
                rundir.truncate_logs({name: 0 for name in ("generations.jsonl", "lineage.jsonl")})
            return evolution.run()
        finally:
            display.close()
    finally:
        if backend is not None:
            backend.close()  # a no-op once the run closed it
        rundir.unlock()


def _trusted_run(rundir: RunDir, total: int) -> RunCheck:
    """``verify_run``'s check of a run to continue, its repairs not yet made (``check.repair()``, then
    ``check.checkpoint``). What cannot be repaired is an error, one line per problem, and the run is
    left untouched."""
    check = verify_run(rundir.path, total)
    if not check.trusted:
        raise RunDirError("\n".join(p.text for p in check.problems if p.repair is None))
    return check


def manifest(config: RunConfig, argv: list[str] | None) -> dict[str, Any]:
    """Versions, commit, seed and hardware: what is needed to reproduce the run."""
    versions = {}
    for package in ("evolveopt", "torch", "deap", "ray", "numpy", "pyyaml", "scikit-learn"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "seed": config.seed, "versions": versions, "python": platform.python_version(),
        "git_commit": _git_commit(), "command": argv or sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "hardware": _hardware(),
    }


def _git_commit() -> str | None:
    source = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpus": os.cpu_count(), "cpus_allowed": len(affinity()),
                            "thread_settings": {k: os.environ.get(k) for k in (THREADS_ENV, *OPENMP_ENV)}}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def _seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def _torch_state() -> str:
    import torch

    return base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()


def _set_torch_state(encoded: str) -> None:
    import torch

    state = np.frombuffer(base64.b64decode(encoded), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(state))


def run_config_file(path: str | Path, out: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                    backend: str | None = None, address: str | None = None, seed: int | None = None,
                    progress: bool | None = None) -> RunSummary:
    """``evolveopt evolve``: load, override, validate, run."""
    extra = list(overrides) + backend_flags(backend, address)
    if seed is not None:
        extra.append(f"seed={seed}")
    config = load_config(path, extra)
    out = Path(out) if out else default_folder(config.name)
    return start_run(config, out, progress=progress)


__all__ = ["Evolution", "RunSummary", "parse_config", "resume_run", "run_config_file", "start_run"]
