"""Filling a cluster: a config's search in both modes on local Ray clusters of N logical workers.

``evolveopt bench cluster --workers 2,8,32,64`` runs the config (``experiments/paper.yaml`` by
default) for ``--generations`` generations (epochs in steady state) at a small ``--budget``, once
generational and once steady state, on one private local Ray cluster per N (``num_cpus=N``; more
logical CPUs than cores is fine for occupancy), and reports from the driver's view:

* **in flight**: units submitted and not yet collected, and evaluations (a genome's units of one
  ``evaluate`` call: one rung in the generational mode, the full budget in steady state) started
  and not yet complete; time-weighted mean and maximum over the window;
* **busy**: the time-integral of units running on workers (each unit's start and end as its worker
  saw them, ``UnitResult.span``) / (N × the window);
* **dispatch**: the driver's time per unit outside blocking waits: (wall time of the run − time
  blocked in ``ray.wait``) / units, so planning, breeding, submitting, ``ray.get``, caching, the
  arrival log and the records all count; also the driver process's CPU time per unit (on an
  oversubscribed machine the wall figure includes time the driver was ready but not scheduled);
* **genomes / s**: genomes evaluated (generational: each new genome once, however many rungs it
  reached; steady state: arrivals) per wall-second of the run; and member-steps per second.

Warm-up: before the clock starts, every one of the N workers has started and imported torch (a
warm-up pass that waits until N distinct worker processes answered) and Adam's baselines are tuned
at every budget the run uses. The window then starts once the run's first N units have started
on workers (every worker slot has had work) and ends at the run's last submission (what follows is
the drain of the last results, when there is nothing left to submit). Busy over the whole run is
printed next to it.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from evolveopt.errors import EvolveOptError

TARGETS = {"steady_state": 0.90, "generational": 0.50}  # busy fraction after warm-up (issue 14)
MODES = ("generational", "steady_state")
DISPATCH_TARGET_MS = 5.0
WORKER_GIB = 0.3  # what one worker holding torch and a task's data takes, to plan a cluster (measured: ~0.28)
MEMORY_FLOOR_GIB = 2.0  # a cluster that would leave less available is not started; a run that does is stopped


class MemoryLow(EvolveOptError):
    """The machine's available memory fell below MEMORY_FLOOR_GIB during a measurement."""
WARMUP = ("warm-up: N worker processes started with torch imported and the baselines tuned before the clock; "
          "window = from the run's N-th unit start to its last submission (the final drain left out)")


@dataclass
class Record:
    """One unit from the driver's view (``time.time()`` seconds) and its worker's."""

    batch: int  # the map_units call it came in (generational), -1 for a submitted unit (steady state)
    unit: Any  # the WorkUnit (its genomes are told apart after the run, off the clock)
    submitted: float
    collected: float
    started: float
    ended: float


@dataclass
class Probe:
    """A backend as the search sees it, recording every unit's submission, collection and span.

    ``close`` is a no-op: one cluster serves both modes, and the bench closes it."""

    backend: Any
    records: list[Record] = field(default_factory=list)
    memory_low: float = float("inf")  # the least MemAvailable seen (GiB)
    _pending: dict[int, tuple[float, Any]] = field(default_factory=dict)
    _batches: int = 0
    _memory_at: float = 0.0

    @property
    def workers(self) -> int:
        return self.backend.workers

    @property
    def ordered(self) -> bool:
        return getattr(self.backend, "ordered", False)

    @property
    def name(self) -> str:
        return self.backend.name

    def map_units(self, units: Sequence[Any], on_done: Any = None) -> list[Any]:
        submitted, collected = time.time(), {}
        self._batches += 1

        def done(index: int) -> None:
            collected[index] = time.time()
            self._sample_memory()
            if on_done is not None:
                on_done(index)

        results = self.backend.map_units(units, done)
        for index, (unit, result) in enumerate(zip(units, results)):
            self.records.append(Record(self._batches, unit, submitted, collected.get(index, time.time()),
                                       *result.span))
        return results

    def submit(self, unit: Any) -> int:
        ticket = self.backend.submit(unit)
        self._pending[ticket] = (time.time(), unit)
        return ticket

    def next_result(self) -> tuple[int, Any]:
        ticket, result = self.backend.next_result()
        collected = time.time()
        submitted, unit = self._pending.pop(ticket)
        self.records.append(Record(-1, unit, submitted, collected, *result.span))
        self._sample_memory()
        return ticket, result

    def cancel_all(self) -> None:
        self.backend.cancel_all()
        self._pending.clear()

    def close(self) -> None:
        pass

    def _sample_memory(self) -> None:
        now = time.monotonic()
        if now - self._memory_at >= 0.5:
            self._memory_at = now
            self.memory_low = min(self.memory_low, memory_available_gib())
            if self.memory_low < MEMORY_FLOOR_GIB:
                raise MemoryLow(f"{self.memory_low:.1f} GiB available, below the {MEMORY_FLOOR_GIB:g} GiB floor")


def _genomes(unit: Any) -> tuple[str, ...]:
    return tuple(sorted({json.dumps(g, sort_keys=True) for g in unit.genomes}))


def memory_available_gib() -> float:
    """MemAvailable of /proc/meminfo in GiB (inf where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def profile(intervals: Sequence[tuple[float, float]], start: float, end: float) -> tuple[float, int]:
    """Time-weighted mean and maximum of how many ``intervals`` cover a moment of [start, end]."""
    if end <= start:
        return 0.0, 0
    covered = sum(max(0.0, min(b, end) - max(a, start)) for a, b in intervals)
    events = sorted([(max(a, start), 1) for a, b in intervals if b > start and a < end]
                    + [(min(b, end), -1) for a, b in intervals if b > start and a < end], key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return covered / (end - start), peak


def evaluations(records: Sequence[Record]) -> list[tuple[float, float]]:
    """Per evaluation (the units of one genome in one batch): from its first submission to its last collection."""
    spans: dict[tuple[int, str], list[float]] = {}
    for r in records:
        for genome in _genomes(r.unit):
            key = (r.batch, genome)
            if key in spans:
                spans[key] = [min(spans[key][0], r.submitted), max(spans[key][1], r.collected)]
            else:
                spans[key] = [r.submitted, r.collected]
    return [(a, b) for a, b in spans.values()]


def summarize(records: Sequence[Record], workers: int, started: float, ended: float) -> dict[str, Any]:
    """The occupancy figures of one run (see the module docstring) from its unit records."""
    starts = sorted(r.started for r in records)
    window_start = starts[min(workers, len(starts)) - 1] if starts else started
    window_end = max((r.submitted for r in records), default=ended)
    running = [(r.started, r.ended) for r in records]
    flight = [(r.submitted, r.collected) for r in records]
    busy_window, running_peak = profile(running, window_start, window_end)
    busy_whole, _ = profile(running, started, ended)
    units_mean, units_max = profile(flight, window_start, window_end)
    evals_mean, evals_max = profile(evaluations(records), window_start, window_end)
    return {
        "window_s": round(max(0.0, window_end - window_start), 2),
        "units_in_flight_mean": round(units_mean, 1), "units_in_flight_max": units_max,
        "evaluations_in_flight_mean": round(evals_mean, 1), "evaluations_in_flight_max": evals_max,
        "units_running_mean": round(busy_window, 2), "units_running_max": running_peak,
        "busy": round(busy_window / workers, 3), "busy_whole_run": round(busy_whole / workers, 3),
    }


def _warm_worker(seconds: float) -> int:
    import torch  # noqa: F401  (what every unit imports first)

    import evolveopt.evaluation.runner  # noqa: F401

    time.sleep(seconds)
    return os.getpid()


def warm_up(backend: Any, rounds: int = 5) -> set[int]:
    """Start N worker processes with torch imported: rounds of N one-CPU tasks holding their CPU for a
    second, until N distinct workers have answered (or ``rounds`` are spent). The workers' process IDs."""
    ray = backend.ray
    task = ray.remote(num_cpus=1)(_warm_worker)
    seen: set[int] = set()
    for _ in range(rounds):
        seen.update(ray.get([task.remote(1.0) for _ in range(backend.workers)]))
        if len(seen) >= backend.workers:
            break
    return seen


def pss_mib(pids: Sequence[int]) -> list[float]:
    """Proportional set size (MiB) of each live process of ``pids`` (Linux; shared pages split among sharers)."""
    sizes = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as rollup:
                sizes.extend(int(line.split()[1]) / 1024 for line in rollup if line.startswith("Pss:"))
        except OSError:
            pass
    return sizes


def measure_mode(mode: str, config_path: str, overrides: list[str], backend: Any) -> dict[str, Any]:
    """One run of the config in ``mode`` on ``backend`` (a started RayBackend), in a temporary folder."""
    import yaml

    from evolveopt.config import load_config, to_plain
    from evolveopt.evaluation.halving import rung_budgets
    from evolveopt.evolution import Evolution, manifest
    from evolveopt.run_directory import RunDir
    from evolveopt.steady_state import SteadyStateEvolution

    config = load_config(config_path, [*overrides, f"search.mode={mode}", "backend.kind=ray"])
    probe = Probe(backend)
    with tempfile.TemporaryDirectory(prefix=f"bench-cluster-{mode}-") as folder:
        rundir = RunDir(Path(folder) / "run")
        rundir.create(yaml.safe_dump(to_plain(config), sort_keys=False), manifest(config, []))
        engine = SteadyStateEvolution if mode == "steady_state" else Evolution
        evolution = engine(config, rundir, None, probe)
        fit = config.fitness
        budgets = [fit.budget] if mode == "steady_state" else rung_budgets(fit.budget, fit.eta, fit.rungs)
        for budget in budgets:
            evolution.scorer.baselines(budget)  # before the clock: both modes tune the same grids
        probe.records.clear()
        probe.memory_low = memory_available_gib()
        blocked, cpu = backend.blocked_s, time.process_time()
        started = time.time()
        evolution.run()
        ended = time.time()
        blocked, cpu = backend.blocked_s - blocked, time.process_time() - cpu
        stats = evolution.scorer.stats
        rows = rundir.read_lines("generations.jsonl")
        try:
            evolution.scorer.cache.close()
        except Exception:  # closed by the run already
            pass
    wall = ended - started
    units = len(probe.records)
    genomes = sum(r["evaluations"] for r in rows)
    out = {
        "mode": mode, "workers": backend.workers, "population": config.search.population,
        "generations": len(rows), "budget": config.fitness.budget,
        "width": evolution.width if mode == "steady_state" else None,
        "wall_s": round(wall, 1), "units": units, "genomes": genomes,
        "genomes_per_s": round(genomes / wall, 2) if wall else 0.0,
        "member_steps_per_s": round(sum(r["member_steps"] for r in rows) / wall) if wall else 0,
        **summarize(probe.records, backend.workers, started, ended),
        "dispatch_ms_per_unit": round(1000 * (wall - blocked) / units, 2) if units else None,
        "dispatch_cpu_ms_per_unit": round(1000 * cpu / units, 2) if units else None,
        "memory_available_min_gib": round(probe.memory_low, 1),
        "speculative_steps": stats.speculative_steps, "speculative_used_steps": stats.speculative_used_steps,
    }
    dropped = stats.speculative_steps - stats.speculative_used_steps  # trained for genomes not promoted
    trained = sum(r["member_steps"] for r in rows) + dropped
    out["wasted"] = round(dropped / trained, 3) if trained else 0.0
    out["window_fraction"] = round(out["window_s"] / wall, 2) if wall else 0.0
    return out


def run_cluster_benchmark(workers: Sequence[int] = (2, 8, 32, 64), generations: int = 4,
                          config_path: str = "experiments/paper.yaml", budget: int | None = 30,
                          population: int | None = None, in_flight_per_worker: int | None = None,
                          modes: Sequence[str] = MODES, speculate: bool = True,
                          on_row: Any = None) -> dict[str, Any]:
    """Every N of ``workers``: a private local Ray cluster of N logical CPUs, each of ``modes`` on it;
    ``speculate`` False: the generational rungs one after another (``backend.speculate=false``)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from evolveopt.backends import RayBackend
    from evolveopt.config import BackendConfig

    overrides = [f"search.generations={generations}"]
    if not speculate:
        overrides.append("backend.speculate=false")
    if budget is not None:
        overrides.append(f"fitness.budget={budget}")
    if population is not None:
        overrides.append(f"search.population={population}")
    if in_flight_per_worker is not None:
        overrides.append(f"search.in_flight_per_worker={in_flight_per_worker}")
    from evolveopt.config import load_config

    for mode in modes:  # a bad config or override: one line before any cluster starts
        load_config(config_path, [*overrides, f"search.mode={mode}", "backend.kind=ray"])
    rows: list[dict[str, Any]] = []
    for n in workers:
        memory_before = memory_available_gib()
        if memory_before - n * WORKER_GIB < MEMORY_FLOOR_GIB:
            rows.append({"workers": n, "skipped": f"{n} workers need about {n * WORKER_GIB:.1f} GiB; "
                                                  f"{memory_before:.1f} GiB available"})
            continue
        backend = RayBackend(BackendConfig(kind="ray", num_cpus=n))
        try:
            pids = warm_up(backend)
            for mode in modes:
                row = measure_mode(mode, config_path, overrides, backend)
                sizes = pss_mib(sorted(pids))
                row.update(workers_warmed=len(pids), memory_available_before_gib=round(memory_before, 1),
                           worker_pss_mib=round(sum(sizes) / len(sizes)) if sizes else None)
                rows.append(row)
                if on_row is not None:
                    on_row(row)
        except MemoryLow as exc:
            rows.append({"workers": n, "skipped": f"stopped: {exc}"})
        finally:
            backend.close()
    from evolveopt.measure import cpu_model

    return {"config": config_path, "overrides": overrides, "hardware": cpu_model(),
            "memory_total_gib": round(_memory_total_gib(), 1), "warmup": WARMUP, "rows": rows}


def _memory_total_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            return int(info.readline().split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def verdict(row: dict[str, Any]) -> str:
    """The row against the targets: busy >= 90 % (steady state) / 50 % (generational), dispatch <= 5 ms."""
    target = TARGETS[row["mode"]]
    busy = "ok" if row["busy"] >= target else "MISS"
    parts = [f"busy>={target:.0%} {busy}"]
    if row["mode"] == "steady_state":
        wall = "ok" if (row["dispatch_ms_per_unit"] or 0) <= DISPATCH_TARGET_MS else "MISS"
        cpu = "ok" if (row["dispatch_cpu_ms_per_unit"] or 0) <= DISPATCH_TARGET_MS else "MISS"
        parts.append(f"dispatch<={DISPATCH_TARGET_MS:g}ms wall {wall} cpu {cpu}")
    if row["window_fraction"] < 0.25:
        parts.append("short window")
    return ", ".join(parts)


def format_cluster(report: dict[str, Any]) -> str:
    head = (f"{'N':>3} {'mode':<12} {'pop':>4} {'width':>5} {'wall s':>7} {'units':>6} {'genomes/s':>9} "
            f"{'units fl mean/max':>17} {'evals fl mean/max':>17} {'busy':>5} {'(run)':>5} "
            f"{'disp ms':>7} {'cpu ms':>6} {'mem GiB':>7} {'wkr MiB':>7}  target")
    lines = [f"config {report['config']} ({' '.join(report['overrides'])}); {report['hardware']}, "
             f"{report['memory_total_gib']:g} GiB", report["warmup"], head]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"{r['workers']:>3} not measured: {r['skipped']}")
            continue
        lines.append(
            f"{r['workers']:>3} {r['mode']:<12} {r['population']:>4} {r['width'] or '-':>5} {r['wall_s']:>7.1f} "
            f"{r['units']:>6} {r['genomes_per_s']:>9.2f} "
            f"{r['units_in_flight_mean']:>11.1f}/{r['units_in_flight_max']:<5} "
            f"{r['evaluations_in_flight_mean']:>11.1f}/{r['evaluations_in_flight_max']:<5} "
            f"{r['busy']:>5.0%} {r['busy_whole_run']:>5.0%} {r['dispatch_ms_per_unit'] or 0:>7.2f} "
            f"{r['dispatch_cpu_ms_per_unit'] or 0:>6.2f} {r['memory_available_min_gib']:>7.1f} "
            f"{r.get('worker_pss_mib') or '-':>7}  {verdict(r)}")
    lines.append("busy: units running on workers / (N x window); (run): over the whole run; disp ms: driver wall "
                 "time outside ray.wait per unit; cpu ms: driver process CPU per unit; mem GiB: least MemAvailable "
                 "during the run; wkr MiB: mean PSS of a worker after it")
    return "\n".join(lines)
